//! The write path every local change ends in: a fresh HLC version, sealing, signing,
//! and one durable batch of record, index entries and outbox event. There is no
//! locking helper: each operation takes its own store locks before it reads.

use std::time::Instant;

use super::Users;
use crate::accounts::error::UserError;
use crate::common::hlc::Version;
use crate::common::metrics as m;
use crate::crypto::envelope::{self, UserSecret};
use crate::crypto::signatures;
use crate::proto;
use crate::storage::store::{record_version, Change as StoreChange};

impl Users {
    /// Gives `record` a new version, seals `info` into it and commits it: a change to
    /// `previous` under that account's key, or a new account with a key made here.
    pub(super) fn commit(
        &self,
        previous: Option<(&proto::Record, &UserSecret)>,
        mut record: proto::Record,
        info: &proto::Info,
        kind: &'static str,
    ) -> Result<Version, UserError> {
        let (previous, user) = previous.unzip();
        let version = self.hlc.tick_after(previous.map(record_version).as_ref());
        record.version = Some(version.to_proto());
        record.updated_at_ms = version.physical_ms;
        if previous.is_none() {
            record.created_at_ms = version.physical_ms;
            record.created = Some(version.to_proto());
        }
        let keyring = self.keyring();
        let regions = self.wrap_regions(&keyring)?;
        match user {
            Some(user) => {
                self.seal(&mut record, info, &keyring, &regions, user)?;
                self.commit_sealed(previous, &mut record, kind)?;
            }
            None => {
                // A new account: its key is made here, wrapped for the same regions as
                // its record, and written and published with its first version.
                let (mut key, user) = envelope::new_user_key(&record.id, &keyring, &regions)
                    .map_err(UserError::Crypto)?;
                signatures::sign(&keyring, &mut key);
                self.user_key_mac.sign(&mut key);
                self.seal(&mut record, info, &keyring, &regions, &user)?;
                signatures::sign(&keyring, &mut record);
                self.record_mac.sign(&mut record);
                let started = Instant::now();
                self.store.commit_many(&[StoreChange {
                    previous: None,
                    record: &record,
                    outbox: true,
                    user_key: Some(&key),
                }])?;
                self.committed(kind, started);
            }
        }
        Ok(version)
    }

    pub(super) fn commit_sealed(
        &self,
        previous: Option<&proto::Record>,
        record: &mut proto::Record,
        kind: &'static str,
    ) -> Result<(), UserError> {
        signatures::sign(&self.keyring(), record);
        self.record_mac.sign(record);
        let started = Instant::now();
        self.store.commit(previous, record, true)?;
        self.committed(kind, started);
        Ok(())
    }

    fn committed(&self, kind: &'static str, started: Instant) {
        self.outbox_signal.notify_one();
        metrics::histogram!(m::STORE_COMMIT_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => kind).increment(1);
        metrics::counter!(m::OUTBOX_EVENTS_TOTAL).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::users::testkit::{drain, key_event, new_user, record_event, users};
    use crate::storage::store::IndexField;

    #[test]
    fn a_change_lands_with_its_index_entries_and_its_outbox_events() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        let hash = u.email_index("ada@example.com");
        assert_eq!(
            u.store().lookup(IndexField::Email, &hash).unwrap(),
            Some(*id.as_bytes())
        );
        let events = drain(&u);
        let record = record_event(&events).record.unwrap();
        assert_eq!(record.id, id.as_bytes().to_vec());
        assert!(!record.tombstone);
        assert_eq!(
            key_event(&events).user_key.unwrap().user_id,
            id.as_bytes().to_vec()
        );
    }
}
