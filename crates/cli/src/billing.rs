//! `skiff billing report`: what each service revision and job execution used and cost, beside
//! what its instances actually consumed.

use crate::api::Api;
use crate::output::{print_machine, print_table, ListFormat};
use anyhow::{anyhow, bail, Result};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use skiff_metering::{Billing, Kind, Report};

#[derive(clap::Subcommand, Debug)]
pub enum BillingCommand {
    /// Usage and cost per service revision and job execution, with what the instances'
    /// cgroups say they used (CPU seconds, peak memory)
    Report {
        /// Only this service
        #[arg(long, value_name = "SERVICE", conflicts_with = "job")]
        service: Option<String>,
        /// Only this job
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
        /// Start: RFC 3339 (2026-11-01T00:00:00Z), a date (2026-11-01, UTC), or a duration
        /// ago (2h) [default: the start of this month]
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// End, in the same forms [default: now]
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
}

/// A time as `--since`/`--until` take it, relative to `now`.
pub fn parse_time(flag: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let t = v.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(ago) = skiff_model::parse_duration(t) {
        let ago = chrono::Duration::from_std(ago).map_err(|e| anyhow!("{flag} {v:?}: {e}"))?;
        return Ok(now - ago);
    }
    bail!("invalid {flag} {v:?}: give an RFC 3339 time (2026-11-01T00:00:00Z), a date (2026-11-01) or a duration ago (2h)")
}

fn money(v: f64) -> String {
    format!("${v:.6}")
}

fn mib(bytes: u64) -> String {
    format!("{:.1}Mi", bytes as f64 / (1u64 << 20) as f64)
}

pub fn rows(r: &Report) -> Vec<Vec<String>> {
    r.lines
        .iter()
        .map(|l| {
            vec![
                match l.kind {
                    Kind::Service => "service",
                    Kind::Job => "job",
                }
                .to_string(),
                l.name.clone(),
                l.revision.clone(),
                match l.billing {
                    Billing::Request => "request",
                    Billing::Instance => "instance",
                }
                .to_string(),
                l.instances.to_string(),
                l.usage.requests.to_string(),
                format!("{:.1}", l.usage.billable_seconds),
                format!("{:.2}", l.usage.vcpu_seconds),
                format!("{:.2}", l.usage.gib_seconds),
                mib(l.egress_bytes),
                money(l.cost.total),
                format!("{:.2}", l.used_cpu_seconds),
                mib(l.peak_memory_bytes),
            ]
        })
        .collect()
}

pub fn run(api: &Api, cmd: BillingCommand) -> Result<()> {
    let BillingCommand::Report {
        service,
        job,
        since,
        until,
        format,
    } = cmd;
    let now = Utc::now();
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = &service {
        query.push(("service", s.clone()));
    }
    if let Some(j) = &job {
        query.push(("job", j.clone()));
    }
    for (flag, name, v) in [("--since", "since", &since), ("--until", "until", &until)] {
        if let Some(v) = v {
            let t = parse_time(flag, v, now)?;
            query.push((name, t.to_rfc3339_opts(SecondsFormat::Millis, true)));
        }
    }
    let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let v: serde_json::Value = api.get(&api.skiff_ns("usage"), &q)?;
    if let Some(f) = format {
        return print_machine(&v, f == ListFormat::Yaml);
    }
    let r: Report = serde_json::from_value(v)
        .map_err(|e| anyhow!("unexpected usage report from the Skiff API: {e}"))?;
    println!("Usage from {} to {} ({})", r.since, r.until, r.currency);
    if r.lines.is_empty() {
        println!("No usage recorded in this period.");
    } else {
        print_table(
            &[
                "KIND",
                "NAME",
                "REVISION",
                "BILLING",
                "INSTANCES",
                "REQUESTS",
                "BILLABLE-S",
                "VCPU-S",
                "GIB-S",
                "EGRESS",
                "COST",
                "CPU-USED-S",
                "PEAK-MEM",
            ],
            &rows(&r),
        );
    }
    println!(
        "List price {}, free tier -{}, total {}",
        money(r.cost),
        money(r.free_tier),
        money(r.total)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_in_every_form() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let p = |v| parse_time("--since", v, now);
        assert_eq!(
            p("2026-11-01T00:00:00Z").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            p("2026-11-02").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap()
        );
        assert_eq!(
            p("2h").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap()
        );
        let e = p("yesterday").unwrap_err().to_string();
        assert!(e.contains("--since") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn report_rows() {
        let rows_in = [skiff_metering::UsageRow {
            namespace: "default".into(),
            kind: Kind::Service,
            owner: "hello".into(),
            revision: "hello-00001-abc".into(),
            mode: Billing::Request,
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
            month: "2026-11".into(),
            instances: 1,
            billable_ms: 3_400,
            requests: 10,
            cpu_ns: 120_000_000,
            memory_peak_bytes: 3 << 20,
            sent_bytes: 4 << 20,
            received_bytes: 1 << 20,
            egress_bytes: 2 << 20,
        }];
        let r = skiff_metering::report::build(
            &rows_in,
            &skiff_metering::Prices::default(),
            "a".into(),
            "b".into(),
        );
        assert_eq!(
            rows(&r),
            vec![vec![
                "service",
                "hello",
                "hello-00001-abc",
                "request",
                "1",
                "10",
                "3.4",
                "3.40",
                "1.70",
                "2.0Mi",
                "$0.000324",
                "0.12",
                "3.0Mi"
            ]]
        );
    }
}
