//! Replays synthetic traffic for many services through the autoscaler in virtual time and
//! prints what it cost and how it served, as markdown tables.
//!
//! ```text
//! cargo run --release -p skiff-autoscaler --example simulate -- --services 10000 --seconds 600
//! ```
//!
//! Options: `--services N` (1000), `--seconds N` (600), `--seed N` (1), `--policy
//! kpa|kpa+reactive|legacy|all` (all), `--window 60s`, `--utilization 70` (percent),
//! `--panic-window 10` (percent), `--panic-threshold 200` (percent), `--grace 60s`,
//! `--startup 1s..3s`, `--threads N` (one per CPU).

use skiff_autoscaler::parse_go_duration;
use skiff_autoscaler::sim::{compare, simulate_with, Policy, SimConfig, Startup};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("simulate: {e}");
        std::process::exit(2);
    }
}

fn duration(flag: &str, v: &str) -> Result<Duration, String> {
    parse_go_duration(v).ok_or_else(|| format!("{flag}: {v:?} is not a duration: use 60s or 1m"))
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

fn run() -> Result<(), String> {
    let mut cfg = SimConfig::new(1000, 600, 1);
    let mut policies = Policy::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("usage: simulate [--services N] [--seconds N] [--seed N] [--policy kpa|kpa+reactive|legacy|all] [--window 60s] [--utilization 70] [--panic-window 10] [--panic-threshold 200] [--grace 60s] [--startup 1s..3s] [--threads N]");
            return Ok(());
        }
        let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let d = &mut cfg.defaults;
        match flag.as_str() {
            "--services" => cfg.services = number(&flag, &v)?,
            "--seconds" => cfg.seconds = number(&flag, &v)?,
            "--seed" => cfg.seed = number(&flag, &v)?,
            "--threads" => cfg.threads = number(&flag, &v)?,
            "--window" => d.stable_window = duration(&flag, &v)?,
            "--grace" => d.scale_to_zero_grace = duration(&flag, &v)?,
            "--utilization" => d.target_utilization = number::<f64>(&flag, &v)? / 100.0,
            "--panic-window" => d.panic_window_percentage = number(&flag, &v)?,
            "--panic-threshold" => d.panic_threshold_percentage = number(&flag, &v)?,
            "--startup" => {
                let (lo, hi) = v.split_once("..").unwrap_or((&v, &v));
                cfg.startup = Startup {
                    min: duration(&flag, lo)?,
                    max: duration(&flag, hi)?,
                };
                if cfg.startup.min > cfg.startup.max {
                    return Err(format!("--startup: {v:?} goes backwards: use MIN..MAX"));
                }
            }
            "--policy" => {
                policies = match v.as_str() {
                    "all" => Policy::ALL.to_vec(),
                    name => vec![Policy::ALL
                        .into_iter()
                        .find(|p| p.name() == name)
                        .ok_or_else(|| {
                            format!(
                                "--policy: unknown {name:?}: use kpa, kpa+reactive, legacy or all"
                            )
                        })?],
                }
            }
            _ => return Err(format!("unknown option {flag}: see --help")),
        }
    }
    cfg.defaults.validate()?;

    println!(
        "{} services × {} s (seed {}), start-up {:?}..{:?}, window {:?}, utilization {} %, grace {:?}\n",
        cfg.services,
        cfg.seconds,
        cfg.seed,
        cfg.startup.min,
        cfg.startup.max,
        cfg.defaults.stable_window,
        cfg.defaults.target_utilization * 100.0,
        cfg.defaults.scale_to_zero_grace,
    );
    let mut reports = vec![];
    for p in policies {
        cfg.policy = p;
        let start = Instant::now();
        let r = simulate_with(&cfg);
        let wall = start.elapsed();
        println!(
            "### {} ({:.2} s wall, {} panic service-seconds)\n\n{}",
            p.name(),
            wall.as_secs_f64(),
            r.panic_seconds,
            r.markdown()
        );
        reports.push(r);
    }
    if reports.len() > 1 {
        println!("### all policies\n\n{}", compare(&reports));
    }
    Ok(())
}
