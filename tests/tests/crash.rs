//! A broker process killed with SIGKILL while an acks=all producer sends loses no acknowledged
//! record: every one is read back at its offset after a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::producer::FutureRecord;
use strata_tests::{ChildBroker, free_port, producer, read, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_record() {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_strata-under-test"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let settings = [
        "--set",
        "num.partitions=3",
        "--set",
        "log.segment.bytes=65536",
    ];
    let broker = ChildBroker::start(&binary, &data, free_port(), &settings);
    let producer = producer(
        &broker.bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "2"),
            ("message.timeout.ms", "5000"),
        ],
    );
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Arc::default();
    let sender = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut in_flight = Vec::new();
            for i in 0..200_000u32 {
                let value = format!("record-{i}-{}", "p".repeat((i % 200) as usize));
                let key = format!("key-{}", i % 31);
                match producer.send_result(FutureRecord::to("crash").key(&key).payload(&value)) {
                    Ok(delivery) => in_flight.push((delivery, value)),
                    Err(_) => break,
                }
                if in_flight.len() >= 200 {
                    for (delivery, value) in in_flight.drain(..) {
                        match delivery.await {
                            Ok(Ok(d)) => acked.lock().unwrap().push((d.partition, d.offset, value)),
                            _ => return,
                        }
                    }
                }
            }
        })
    };
    wait_for("5000 acknowledged records", || {
        (acked.lock().unwrap().len() >= 5000).then_some(())
    });
    broker.kill();
    let _ = tokio::time::timeout(Duration::from_secs(60), sender).await;
    let acked = acked.lock().unwrap().clone();

    let broker = ChildBroker::start(&binary, &data, free_port(), &settings);
    for partition in 0..3 {
        let expected: Vec<&(i32, i64, String)> =
            acked.iter().filter(|(p, _, _)| *p == partition).collect();
        let Some(last) = expected.iter().map(|(_, o, _)| *o).max() else {
            continue;
        };
        let got = read(
            &broker.bootstrap,
            "crash",
            &[partition],
            Offset::Beginning,
            (last + 1) as usize,
        );
        for (_, offset, value) in expected {
            let record = &got[*offset as usize];
            assert_eq!(record.offset, *offset);
            assert_eq!(
                record.value.as_deref(),
                Some(value.as_bytes()),
                "partition {partition} offset {offset}"
            );
        }
    }
    assert!(
        broker.terminate().success(),
        "a clean SIGTERM exit after recovery"
    );
}
