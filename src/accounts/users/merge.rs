//! Merging duplicate accounts found while applying: which one wins, what the winner
//! takes from the others, and the one batch that writes them all.

use uuid::Uuid;

use super::{Users, CURRENT_HASH};
use crate::accounts::error::UserError;
use crate::common::hlc::Version;
use crate::common::metrics as m;
use crate::crypto::envelope::UserSecret;
use crate::proto::{self, Status};
use crate::storage::store::{record_version, Change as StoreChange};

/// Order of precedence between duplicate accounts: the earlier creation wins, then
/// the lower id. Records without a creation version rank by their version.
fn merge_rank(r: &proto::Record) -> (Version, Vec<u8>) {
    let created = r
        .created
        .as_ref()
        .map(Version::from_proto)
        .unwrap_or_else(|| record_version(r));
    (created, r.id.clone())
}

/// Folds a duplicate account into the winner: the winner's values stand, missing
/// profile fields and a missing phone are taken, every password hash is kept as a
/// legacy hash so either account's password still logs in, a second factor is taken
/// when the winner has none, and the loser's other addresses are remembered.
fn fold_into(
    winner: &mut proto::Record,
    info: &mut proto::Info,
    loser: &proto::Record,
    loser_info: &proto::Info,
    take_factor: bool,
) {
    for (k, v) in &loser_info.profile {
        info.profile.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if winner.secret.is_empty() {
        winner.secret = loser.secret.clone();
    } else if !loser.secret.is_empty() && loser.secret != winner.secret {
        let h = proto::LegacyHash {
            algorithm: CURRENT_HASH.into(),
            hash: loser.secret.clone(),
            source: "merged-account".into(),
            ..Default::default()
        };
        if !super::add_legacy_hash(info, h.clone()) {
            // At the bound: a password its user logs in with today outranks a hash
            // imported from an old system.
            if let Some(i) = info
                .old_hashes
                .iter()
                .position(|o| o.algorithm != CURRENT_HASH)
            {
                info.old_hashes.remove(i);
                super::add_legacy_hash(info, h);
            }
        }
    }
    // A second factor stays with the password it protected: a winner without one
    // takes the loser's authenticator (`take_factor`), or the loser's password would
    // now sign in without it. (Its recovery codes are hashed with the loser's id, so
    // they do not carry over; new ones can be made.)
    if take_factor {
        info.totp_secret = loser_info.totp_secret.clone();
        info.recovery_hashes.clear();
    }
    // Then the loser's legacy hashes, after its current one: past the bound, the rest
    // are not kept.
    for h in &loser_info.old_hashes {
        super::add_legacy_hash(info, h.clone());
    }
    let mut emails = vec![loser_info.email.clone()];
    emails.extend(loser_info.other_emails.iter().cloned());
    for e in emails {
        if !e.is_empty() && e != info.email && !info.other_emails.contains(&e) {
            info.other_emails.push(e);
        }
    }
    let mut phones = Vec::new();
    if !loser_info.phone.is_empty() {
        if info.phone.is_empty() && !loser.phone_index.is_empty() {
            info.phone = loser_info.phone.clone();
            winner.phone_index = loser.phone_index.clone();
        } else {
            phones.push(loser_info.phone.clone());
        }
    }
    phones.extend(loser_info.other_phones.iter().cloned());
    for p in phones {
        if p != info.phone && !info.other_phones.contains(&p) {
            info.other_phones.push(p);
        }
    }
}

impl Users {
    /// Gives a record derived from `base` (and replacing `stored`) a version above both,
    /// seals `info` into it with a fresh data key and signs it.
    fn reseal(
        &self,
        record: &mut proto::Record,
        (info, user): (&proto::Info, &UserSecret),
        base: &proto::Record,
        stored: Option<&proto::Record>,
    ) -> Result<(), UserError> {
        let after = stored.map(record_version).max(Some(record_version(base)));
        record.version = Some(self.hlc.tick_after(after.as_ref()).to_proto());
        record.updated_at_ms = self.hlc.physical_now();
        let keyring = self.keyring();
        let regions = self.wrap_regions(&keyring)?;
        self.seal(record, info, &keyring, &regions, user)?;
        crate::crypto::signatures::sign(&keyring, record);
        self.record_mac.sign(record);
        Ok(())
    }

    /// Merges duplicate accounts: `incoming` (replacing `current` under its id) and
    /// the live accounts that hold its email or phone. The callers hold every lock.
    /// Returns (winner, loser) when the winner took the loser's second factor: the
    /// caller passes them to [`Users::inherit_factor`] once it let the locks go.
    pub(super) fn merge_duplicates(
        &self,
        current: Option<&proto::Record>,
        incoming: proto::Record,
        others: Vec<proto::Record>,
    ) -> Result<Option<(Uuid, Uuid)>, UserError> {
        // (record, what it replaces in the store)
        let mut accounts: Vec<(proto::Record, Option<proto::Record>)> =
            vec![(incoming, current.cloned())];
        accounts.extend(others.into_iter().map(|o| (o.clone(), Some(o))));
        accounts.sort_by_key(|a| merge_rank(&a.0));
        let (winner, winner_prev) = accounts.remove(0);
        let winner_id = winner.id.clone();
        let (mut winner_info, winner_key) = self.opened(&winner)?;
        let mut winner_record = winner.clone();
        let mut merged: Vec<(proto::Record, Option<proto::Record>)> = Vec::new();
        let winner_uuid = Uuid::from_slice(&winner_id).map_err(|_| UserError::Unreadable)?;
        let mut winner_on = self.factor_on(&winner_uuid)? && !winner_info.totp_secret.is_empty();
        let mut inherited = None;
        for (loser, loser_prev) in accounts {
            let (info, key) = self.opened(&loser)?;
            let loser_uuid = Uuid::from_slice(&loser.id).map_err(|_| UserError::Unreadable)?;
            let take = !winner_on && !info.totp_secret.is_empty() && self.factor_on(&loser_uuid)?;
            fold_into(&mut winner_record, &mut winner_info, &loser, &info, take);
            if take {
                winner_on = true;
                inherited = Some(loser_uuid);
            }
            let mut record = loser.clone();
            record.status = Status::Merged as i32;
            record.merged_into = winner_id.clone();
            self.reseal(&mut record, (&info, &key), &loser, loser_prev.as_ref())?;
            merged.push((record, loser_prev));
        }
        // The winner now logs in with the losers' passwords too: its sessions end.
        self.credentials_changed(&mut winner_record);
        self.reseal(
            &mut winner_record,
            (&winner_info, &winner_key),
            &winner,
            winner_prev.as_ref(),
        )?;
        // Losers first: their index entries go before the winner (re)claims them.
        let mut changes: Vec<StoreChange<'_>> = merged
            .iter()
            .map(|(r, prev)| StoreChange {
                previous: prev.as_ref(),
                record: r,
                outbox: true,
                user_key: None,
            })
            .collect();
        changes.push(StoreChange {
            previous: winner_prev.as_ref(),
            record: &winner_record,
            outbox: true,
            user_key: None,
        });
        self.store.commit_many(&changes)?;
        self.outbox_signal.notify_one();
        metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "merge")
            .increment(changes.len() as u64);
        Ok(inherited.map(|loser| (winner_uuid, loser)))
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::{Applied, UserError};
    use crate::accounts::users::testkit::{drain, new_user, two_regions};

    /// Merging into an account that already holds the most legacy hashes keeps the
    /// loser's current password, the one its user logs in with today.
    #[test]
    fn a_merge_keeps_the_losers_current_password_over_old_imported_hashes() {
        use crate::accounts::users::{CURRENT_HASH, MAX_LEGACY_HASHES};
        use crate::proto;
        let mut winner = proto::Record {
            secret: "$argon2id$winner".into(),
            ..Default::default()
        };
        let mut info = proto::Info {
            old_hashes: (0..MAX_LEGACY_HASHES)
                .map(|i| proto::LegacyHash {
                    algorithm: "md5".into(),
                    hash: format!("{i:032x}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let loser = proto::Record {
            secret: "$argon2id$loser".into(),
            ..Default::default()
        };
        let loser_info = proto::Info {
            old_hashes: vec![proto::LegacyHash {
                algorithm: "sha1".into(),
                hash: "ab".repeat(20),
                ..Default::default()
            }],
            ..Default::default()
        };
        super::fold_into(&mut winner, &mut info, &loser, &loser_info, false);
        assert_eq!(info.old_hashes.len(), MAX_LEGACY_HASHES);
        assert!(info
            .old_hashes
            .iter()
            .any(|h| h.algorithm == CURRENT_HASH && h.hash == "$argon2id$loser"));
        assert_eq!(winner.secret, "$argon2id$winner");
    }

    /// The attack: the loser of a merge had an authenticator, the winner none; the
    /// loser's password, which signs in to the winner from then on, must still need it.
    #[test]
    fn a_merge_keeps_the_second_factor_of_the_losers_password() {
        use crate::proto;
        let mut winner = proto::Record::default();
        let mut info = proto::Info::default();
        let loser = proto::Record {
            secret: "$argon2id$loser".into(),
            ..Default::default()
        };
        let loser_info = proto::Info {
            totp_secret: vec![7; 20],
            recovery_hashes: vec![vec![1; 32]],
            ..Default::default()
        };
        super::fold_into(&mut winner, &mut info, &loser, &loser_info, true);
        assert_eq!(info.totp_secret, vec![7; 20]);
        assert!(
            info.recovery_hashes.is_empty(),
            "hashed with the loser's id"
        );
        // A winner with its own keeps it.
        let mut own = proto::Info {
            totp_secret: vec![9; 20],
            recovery_hashes: vec![vec![2; 32]],
            ..Default::default()
        };
        super::fold_into(
            &mut proto::Record::default(),
            &mut own,
            &loser,
            &loser_info,
            false,
        );
        assert_eq!(
            (own.totp_secret, own.recovery_hashes),
            (vec![9; 20], vec![vec![2; 32]])
        );
    }

    /// The same, end to end: the loser turned an authenticator on before the merge;
    /// after it, in both regions, the merged account needs a code, never nothing.
    #[test]
    fn after_a_merge_the_losers_authenticator_guards_the_winner() {
        use crate::accounts::users::factors::SecondFactor;
        let (_dirs, a, b) = two_regions();
        let (winner, _) = a.create(new_user("ada@example.com")).unwrap();
        let (loser, _) = b.create(new_user("ada@example.com")).unwrap();
        let enrolment = b.enrol_totp(&loser).unwrap();
        let now_s = crate::common::hlc::TimeSource::now_ms(&crate::common::hlc::SystemClock) / 1000;
        let code = |step| format!("{:06}", crate::crypto::totp::hotp(&enrolment.secret, step));
        b.confirm_totp(&loser, &code(crate::crypto::totp::step(now_s)))
            .unwrap();
        for _ in 0..2 {
            for e in drain(&a) {
                b.apply(&e).unwrap();
            }
            for e in drain(&b) {
                a.apply(&e).unwrap();
            }
        }
        for users in [&a, &b] {
            assert_eq!(users.find_by_email("ada@example.com").unwrap().id, winner);
            let r = users.login_session("ada@example.com", "correct horse battery", None);
            assert!(
                matches!(r, Err(UserError::SecondFactorRequired { .. })),
                "{r:?}"
            );
        }
        // Here the merge in af-south, made before the authenticator arrived, is the
        // newer record and holds no seed: the account refuses rather than lets in,
        // and a new enrolment mends it.
        let next = SecondFactor::Totp(code(crate::crypto::totp::step(now_s) + 1));
        let r = a.login_session("ada@example.com", "correct horse battery", Some(&next));
        assert!(
            matches!(r, Err(UserError::SecondFactorFailed { .. })),
            "{r:?}"
        );
        let mended = a.enrol_totp(&winner).unwrap();
        let first = format!(
            "{:06}",
            crate::crypto::totp::hotp(&mended.secret, crate::crypto::totp::step(now_s) + 1)
        );
        let codes = a.confirm_totp(&winner, &first).unwrap();
        for e in drain(&a) {
            b.apply(&e).unwrap();
        }
        let recovery = SecondFactor::RecoveryCode(codes[0].clone());
        let r = b.login_session("ada@example.com", "correct horse battery", Some(&recovery));
        assert_eq!(r.unwrap().0, winner);
    }

    #[test]
    fn the_same_email_created_in_two_regions_ends_as_one_account_the_earlier_one() {
        let (_dirs, a, b) = two_regions();
        let (first, _) = a.create(new_user("ada@example.com")).unwrap();
        let (second, _) = b.create(new_user("ada@example.com")).unwrap();
        let outcomes: Vec<Applied> = drain(&a).iter().map(|e| b.apply(e).unwrap()).collect();
        assert!(outcomes.contains(&Applied::Merged), "{outcomes:?}");
        assert_eq!(b.find_by_email("ada@example.com").unwrap().id, first);
        let merged_into = match b.get(&second) {
            Err(UserError::Merged(into)) => Some(into),
            Ok(view) => view.merged_into,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            merged_into,
            Some(first),
            "the later account points at the earlier"
        );
    }
}
