//! Envelope seal/open at three record sizes, and the blind index.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use authsync::crypto::blind_index::BlindIndex;
use authsync::crypto::envelope;
use authsync::proto;

fn regions() -> Vec<String> {
    vec!["af-south".into(), "eu-west".into(), "us-east".into()]
}

fn record_and_info(size: usize) -> (proto::Record, proto::Info) {
    let record = proto::Record {
        id: vec![7; 16],
        version: Some(proto::Version {
            physical_ms: 1_700_000_000_000,
            logical: 0,
            region: "eu-west".into(),
        }),
        status: proto::Status::Active as i32,
        email_index: vec![1; 32],
        ..Default::default()
    };
    let mut info = proto::Info {
        email: "ada@example.com".into(),
        phone: "+14155552671".into(),
        ..Default::default()
    };
    // Fill the profile up to the target plaintext size.
    info.profile
        .insert("bio".into(), "x".repeat(size.saturating_sub(40)));
    (record, info)
}

fn envelope(c: &mut Criterion) {
    let rings = authsync::crypto::keyring::init(&regions()).expect("keyrings");
    let mut group = c.benchmark_group("envelope");
    for size in [256usize, 2048, 16384] {
        let (record, info) = record_and_info(size);
        let (key, _) = envelope::new_user_key(&record.id, &rings[1], &regions()).expect("user key");
        // As a write and a read do it: the user's key is opened each time.
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| {
                let mut r = record.clone();
                let user = envelope::open_user_key(&key, &rings[1]).expect("user key");
                envelope::seal(&mut r, &info, &rings[1], &regions(), &user).expect("seal");
                r
            })
        });
        let mut sealed = record.clone();
        let user = envelope::open_user_key(&key, &rings[1]).expect("user key");
        envelope::seal(&mut sealed, &info, &rings[1], &regions(), &user).expect("seal");
        group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter(|| {
                let user = envelope::open_user_key(&key, &rings[1]).expect("user key");
                envelope::open(&sealed, &rings[1], &user).expect("open")
            })
        });
    }
    group.finish();
}

fn blind_index(c: &mut Criterion) {
    let rings = authsync::crypto::keyring::init(&regions()).expect("keyrings");
    let index = BlindIndex::new(rings[0].index_key());
    c.bench_function("blind_index/email", |b| {
        b.iter(|| index.email("ada.lovelace@example.com"))
    });
}

criterion_group!(benches, envelope, blind_index);
criterion_main!(benches);
