//! Streamed snapshots (issue 14) in the lab style, on the simulator's KV
//! harness with a tiny `maxraftstate`: a leader streams a snapshot to a
//! follower only once the follower answers that it needs one, one transfer
//! at a time, so a follower that cannot be reached costs heartbeats, not
//! snapshots; once it is back it catches up with a transfer or two, on a
//! reliable or an unreliable network. The clerks' history must be
//! linearizable and every acknowledged append present.
//!
//! Each body is run by `tests/snapshots.rs` under the seed from `SIM_SEED`.

use std::time::Duration;

use driver_sim::{ms, now, sleep, KvCfg};
use lab::KvHarness;

/// Server `lagging`, a follower, is cut off while the others take many
/// snapshots; meanwhile no transfer to it starts, however many heartbeats
/// pass. Reconnected, it catches up by InstallSnapshot, with at most
/// `max_transfers` transfers, and serves what the others hold.
async fn cut_off_follower(unreliable: bool, max_transfers: u64) {
    let n = 3;
    let maxraftstate = 1000;
    let cfg = KvCfg::new(n, unreliable, Some(maxraftstate));
    let net = if unreliable { "unreliable" } else { "reliable" };
    cfg.begin(&format!(
        "Test (snapshots): a cut-off follower costs no snapshots, then catches up ({net} net)"
    ));
    let ck = cfg.make_client(&cfg.all());
    cfg.put(&ck, "a", "", 0).await;
    let leader = loop {
        if let Some(l) = cfg.leader() {
            break l;
        }
        sleep(ms(10)).await;
    };
    let lagging = (leader + 1) % n;
    let others: Vec<usize> = cfg.all().into_iter().filter(|&i| i != lagging).collect();
    cfg.disconnect(lagging, &cfg.all());
    let ck = cfg.make_client(&others);
    let sent_before = cfg.snapshots_sent(lagging);
    let mut appended = String::new();
    for i in 0..200 {
        let v = format!("x{i}y");
        cfg.append(&ck, "a", &v, 0).await;
        appended.push_str(&v);
    }
    // The others compacted well past what the cut-off follower holds.
    let lagging_applied = cfg.applied_index(lagging).unwrap_or(0);
    assert!(
        others.iter().all(|&i| cfg
            .snapshot_index(i)
            .is_some_and(|s| s > lagging_applied + 50)),
        "the connected servers never snapshotted past the cut-off one\n{}",
        cfg.status()
    );
    // Several seconds of heartbeats: still no transfer.
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        cfg.snapshots_sent(lagging),
        sent_before,
        "a leader started snapshot transfers to a follower it cannot reach"
    );
    let target = others
        .iter()
        .filter_map(|&i| cfg.applied_index(i))
        .max()
        .expect("running servers");
    cfg.connect(lagging, &cfg.all());
    let back = now();
    while cfg.applied_index(lagging).is_none_or(|a| a < target) {
        assert!(
            now() - back < Duration::from_secs(10),
            "the reconnected follower never caught up to {target}\n{}",
            cfg.status()
        );
        sleep(ms(20)).await;
    }
    let transfers = cfg.snapshots_sent(lagging) - sent_before;
    assert!(
        (1..=max_transfers).contains(&transfers),
        "{transfers} snapshot transfers to catch one follower up (at most {max_transfers})"
    );
    assert!(
        cfg.snapshots_received(lagging) > 0,
        "it caught up without an InstallSnapshot"
    );
    // It serves the same state: ask it alone.
    let own = cfg.make_client(&[lagging]);
    let ck = cfg.make_client(&cfg.all());
    assert_eq!(cfg.get(&ck, "a", 0).await, appended);
    drop(own);
    println!("  {transfers} transfer(s) to catch up");
    cfg.check_linearizable();
    cfg.end();
}

pub async fn cut_off_follower_reliable() {
    cut_off_follower(false, 2).await;
}

pub async fn cut_off_follower_unreliable() {
    // Lost transfers are retried, each only after the follower answered.
    cut_off_follower(true, 12).await;
}

/// Every body, by name.
pub fn tests() -> Vec<(&'static str, crate::Body)> {
    vec![
        ("cut_off_follower_reliable", || {
            Box::pin(cut_off_follower_reliable())
        }),
        ("cut_off_follower_unreliable", || {
            Box::pin(cut_off_follower_unreliable())
        }),
    ]
}
