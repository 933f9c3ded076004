//! Quick start: a local Raft cluster running a short workload, with its
//! leader crashed (and restarted from its persisted state) every three
//! seconds, on the deterministic simulator (virtual time: ten simulated
//! seconds run in a blink).
//!
//! ```text
//! cargo run --release -p examples --example local_cluster
//! cargo run --release -p examples --example local_cluster -- --nodes 7 --seconds 30 --seed 42
//! ```
//!
//! Every line it prints is reproducible: the same seed gives the same run.

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use driver_sim::{ms, now, run, sleep, spawn, Cfg, Cmd, RaftHarness};

struct Options {
    nodes: usize,
    seconds: u64,
    clients: u64,
    seed: u64,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        nodes: 5,
        seconds: 10,
        clients: 3,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--nodes" if (1..=9).contains(&number) => o.nodes = number as usize,
            "--nodes" => return Err("--nodes must be between 1 and 9".into()),
            "--seconds" if number > 0 => o.seconds = number,
            "--clients" if number > 0 => o.clients = number,
            "--seed" => o.seed = number,
            "--seconds" | "--clients" => return Err(format!("{flag} must be positive")),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("usage: local_cluster [--nodes N (1-9, default 5)] [--seconds S (default 10)] [--clients C (default 3)] [--seed SEED (default 1)]");
            return ExitCode::from(2);
        }
    };
    println!(
        "simulated cluster: {} nodes, {} clients, {} virtual seconds, seed {}",
        o.nodes, o.clients, o.seconds, o.seed
    );
    let wall = std::time::Instant::now();
    let committed = run(o.seed, workload(o.nodes, o.seconds, o.clients));
    println!(
        "done: {committed} commands committed on every node, identical logs; {:.2} s of real time",
        wall.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

async fn workload(n: usize, seconds: u64, clients: u64) -> u64 {
    let cfg = Cfg::new(n, false, false);
    let stop = Rc::new(Cell::new(false));
    let done = Rc::new(Cell::new(0u64));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (cfg, stop, done) = (cfg.clone(), stop.clone(), done.clone());
            spawn(async move {
                let mut k = 0;
                while !stop.get() {
                    cfg.one(Cmd::Int((c * 1_000_000 + k) as i64), 1, true).await;
                    done.set(done.get() + 1);
                    k += 1;
                }
            })
        })
        .collect();
    let leader_of = |cfg: &Cfg| (0..n).find(|&i| cfg.is_alive(i) && cfg.get_state(i).1);
    let mut crashed = None;
    for second in 1..=seconds {
        sleep(Duration::from_secs(1)).await;
        if let Some(c) = crashed.take() {
            cfg.start1(c);
            cfg.connect(c);
            println!(
                "  t={:>3}s  node {c} restarts from its persisted state",
                second
            );
        } else if second % 3 == 0 && n > 2 {
            if let Some(l) = leader_of(&cfg) {
                cfg.crash1(l);
                crashed = Some(l);
                println!("  t={:>3}s  crash the leader, node {l}", second);
            }
        }
        let (term, leader) = match leader_of(&cfg) {
            Some(l) => (cfg.get_state(l).0, format!("node {l}")),
            None => (0, "none yet".to_string()),
        };
        println!(
            "  t={:>3}s  leader {leader:<9} term {term:<3} {:>6} commands committed, {:>7} RPCs, {:>9} bytes",
            second,
            done.get(),
            cfg.rpc_total(),
            cfg.bytes_total()
        );
    }
    stop.set(true);
    for w in workers {
        w.await;
    }
    if let Some(c) = crashed {
        cfg.start1(c);
        cfg.connect(c);
    }
    let last = cfg.one(Cmd::Int(-1), n, true).await;
    // Every node applies every index, and the harness has checked after every
    // step that no two nodes applied different commands at one index.
    for index in 1..=last {
        cfg.wait(index, n, None).await;
    }
    sleep(ms(1)).await;
    println!(
        "  t={:>6.2}s  all {n} nodes applied indices 1..={last}",
        now().as_nanos() as f64 / 1e9
    );
    done.get()
}
