//! `floor`: what one put cannot go below on this machine, measured the way
//! the servers do the same work: a loopback TCP hop between two processes'
//! event loops (two tokio current-thread runtimes on their own OS threads,
//! 9-byte messages, half of a ping-pong's round trip), a cross-thread
//! handoff of the kind between an event loop and its storage thread, and a
//! group commit's write and fdatasync inside a preallocated file (as
//! raft-storage does) in the given directory. The floor of a replicated put
//! is then 4 hops (client to leader, leader to follower and back, leader to
//! client) plus the fsyncs on its critical path: the leader's and a
//! follower's run in parallel, and on a shared disk they partly overlap, so
//! 1.5 fsyncs.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::reads_report::median;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Median one-way loopback hop, µs.
fn hop_us(rounds: usize) -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 9];
            loop {
                if s.read_exact(&mut buf).await.is_err() {
                    return Ok(());
                }
                s.write_all(&buf).await?;
            }
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let samples = rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut buf = [7u8; 9];
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + 1000 {
            let t = Instant::now();
            s.write_all(&buf).await?;
            s.read_exact(&mut buf).await?;
            if i >= 1000 {
                samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
        }
        Ok::<_, anyhow::Error>(samples)
    })?;
    let _ = server.join();
    Ok(median(samples))
}

/// Median one-way handoff from a tokio current-thread runtime to a std
/// thread blocked on a channel and back (as the loop hands writes to the
/// storage thread, which answers through the loop's queue), µs.
fn handoff_us(rounds: usize) -> Result<f64> {
    let (to_thread, from_loop) = std::sync::mpsc::channel::<Instant>();
    let (to_loop, mut from_thread) = tokio::sync::mpsc::channel::<Instant>(16);
    let worker = std::thread::spawn(move || {
        while let Ok(t) = from_loop.recv() {
            if to_loop.blocking_send(t).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let samples = rt.block_on(async move {
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + 1000 {
            let t = Instant::now();
            to_thread.send(t).ok();
            from_thread.recv().await;
            if i >= 1000 {
                samples.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
            }
            // Let the worker go back to sleep, as the storage thread does
            // between commits.
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
        samples
    });
    let _ = worker.join();
    Ok(median(samples))
}

/// Median write + fdatasync of `size` bytes at the end of the records of a
/// preallocated file in `dir`, µs; and the same with `parallel` such
/// writers at once (each its own file), to see how the disk overlaps them.
fn fsync_us(dir: &Path, size: usize, rounds: usize, parallel: usize) -> Result<f64> {
    let run = |k: usize| -> Result<Vec<f64>> {
        let path = dir.join(format!("floor-fsync-{}-{k}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.set_len(((rounds * size) as u64).div_ceil(4 << 20) * (4 << 20))?;
        f.flush()?;
        f.sync_all()?;
        let buf = vec![b'x'; size];
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let t = Instant::now();
            f.write_all_at(&buf, (i * size) as u64)?;
            f.sync_data()?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        drop(f);
        std::fs::remove_file(&path)?;
        Ok(samples)
    };
    let samples = std::thread::scope(|s| {
        let handles: Vec<_> = (0..parallel).map(|k| s.spawn(move || run(k))).collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("fsync thread")?);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    Ok(median(samples))
}

pub fn floor(dir: &Path) -> Result<()> {
    let fsync1 = fsync_us(dir, 300, 2000, 1)?;
    let fsync2 = fsync_us(dir, 300, 1000, 2)?;
    let hop = hop_us(20_000)?;
    let handoff = handoff_us(5_000)?;
    let floor_us = 1.5 * fsync1 + 4.0 * hop;
    println!("fsync_us={fsync1:.1} fsync_2_parallel_us={fsync2:.1} hop_us={hop:.1} handoff_us={handoff:.1} floor_us={floor_us:.1}");
    eprintln!(
        "write+fdatasync of 300 bytes in a preallocated file: median {fsync1:.1} µs ({fsync2:.1} µs each with 2 at once)\n\
         loopback TCP hop between two event loops: median {hop:.1} µs\n\
         event loop to a blocked thread (or back): median {handoff:.1} µs\n\
         floor of a replicated put, 1.5 fsyncs + 4 hops: {floor_us:.0} µs ({:.3} ms)",
        floor_us / 1000.0
    );
    Ok(())
}
