//! The scheduler: Cloud Scheduler–style jobs that, on a Unix cron schedule in an IANA time
//! zone, run a Skiff job or call a URL (a Skiff service URL gets an identity token). Each run's
//! outcome is kept on the scheduler job. The next fire time is stored, so a schedule missed
//! while the server was down runs once when it starts, not once per missed tick.

use crate::{JobError, Jobs, Overrides};
use base64::Engine;
use chrono::{DateTime, Utc};
use skiff_model::{now_rfc3339, InvalidInput, Job, SchedulerJob, SchedulerRun};
use skiff_store::{kind, Store};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Runs kept per scheduler job.
const KEEP_RUNS: usize = 20;
/// HTTP attempts per run (with 1 s, 2 s, 4 s… between them).
const HTTP_ATTEMPTS: u32 = 4;
pub const ENABLED: &str = "ENABLED";
pub const PAUSED: &str = "PAUSED";

/// Issues identity tokens for private Skiff services (audience = the URL).
pub type TokenMinter = Arc<dyn Fn(&str) -> String + Send + Sync>;

pub struct Scheduler {
    store: Arc<Store>,
    jobs: Arc<Jobs>,
    http: reqwest::Client,
    /// Which URLs are Skiff's own services, and the ingress's port.
    urls: skiff_model::ServiceUrls,
    mint: TokenMinter,
    /// Serializes read-modify-write of scheduler jobs between the API and the ticker.
    lock: tokio::sync::Mutex<()>,
}

/// Parses a time zone name; empty means `Etc/UTC`.
pub fn time_zone(name: Option<&str>) -> Result<chrono_tz::Tz, InvalidInput> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or("Etc/UTC");
    chrono_tz::Tz::from_str(name).map_err(|_| {
        InvalidInput::new(format!(
            "invalid time zone {name:?}: use an IANA name like Europe/Paris or Etc/UTC"
        ))
    })
}

pub fn cron(schedule: &str) -> Result<croner::Cron, InvalidInput> {
    let fields = schedule.split_whitespace().count();
    if fields != 5 && !schedule.trim_start().starts_with('@') {
        return Err(InvalidInput::new(format!(
            "invalid schedule {schedule:?}: use Unix cron with 5 fields (minute hour day-of-month month day-of-week), like \"*/5 * * * *\""
        )));
    }
    croner::Cron::from_str(schedule)
        .map_err(|e| InvalidInput::new(format!("invalid schedule {schedule:?}: {e}")))
}

/// The first time after `after` that `schedule` fires in `tz`.
pub fn next_after(
    schedule: &str,
    tz: Option<&str>,
    after: DateTime<Utc>,
) -> Result<DateTime<Utc>, InvalidInput> {
    let tz = time_zone(tz)?;
    let c = cron(schedule)?;
    c.find_next_occurrence(&after.with_timezone(&tz), false)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| InvalidInput::new(format!("schedule {schedule:?} never fires: {e}")))
}

/// Checks a scheduler job before it is stored.
pub fn validate(j: &SchedulerJob) -> Result<(), InvalidInput> {
    skiff_model::validate_name("scheduler job", short_name(&j.name), 500)?;
    next_after(&j.schedule, j.time_zone.as_deref(), Utc::now())?;
    match (&j.http_target, &j.run_job_target) {
        (Some(h), None) => {
            let ok = h.uri.starts_with("http://") || h.uri.starts_with("https://");
            if !ok {
                return Err(InvalidInput::new(format!(
                    "invalid uri {:?}: use an http:// or https:// URL",
                    h.uri
                )));
            }
            let m = h.http_method.as_deref().unwrap_or("POST");
            if !["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"].contains(&m) {
                return Err(InvalidInput::new(format!(
                    "invalid http method {m:?}: use GET, POST, PUT, DELETE, PATCH, HEAD or OPTIONS"
                )));
            }
            if let Some(b) = &h.body {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| InvalidInput::new("invalid body: httpTarget.body is base64"))?;
            }
            Ok(())
        }
        (None, Some(_)) => Ok(()),
        _ => Err(InvalidInput::new(
            "give exactly one target: --job JOB or --uri URL",
        )),
    }
}

/// `projects/P/locations/L/jobs/NAME` → `NAME`.
pub fn short_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

impl Scheduler {
    pub fn new(
        store: Arc<Store>,
        jobs: Arc<Jobs>,
        urls: skiff_model::ServiceUrls,
        mint: TokenMinter,
    ) -> Arc<Scheduler> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Arc::new(Scheduler {
            store,
            jobs,
            http,
            urls,
            mint,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Fires due jobs once a second until the process ends.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = this.tick(Utc::now()).await {
                    tracing::error!("scheduler: {e}");
                }
            }
        });
    }

    async fn tick(self: &Arc<Self>, now: DateTime<Utc>) -> Result<(), JobError> {
        let _g = self.lock.lock().await;
        for (ns, mut j) in self.all()? {
            if j.state != ENABLED {
                continue;
            }
            let due = j
                .schedule_time
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let fire = due.is_some_and(|d| d <= now);
            if due.is_none() || fire {
                // Missed ticks collapse into one run: the next time is computed from now.
                let next = next_after(&j.schedule, j.time_zone.as_deref(), now)?;
                j.schedule_time = Some(next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                self.store
                    .put_object(kind::SCHEDULER_JOB, &ns, short_name(&j.name), "", &j)?;
            }
            if fire {
                let this = self.clone();
                tokio::spawn(async move { this.fire(&ns, short_name(&j.name), "scheduled").await });
            }
        }
        Ok(())
    }

    fn all(&self) -> Result<Vec<(String, SchedulerJob)>, JobError> {
        let jobs: Vec<serde_json::Value> =
            self.store.list_objects(kind::SCHEDULER_JOB, None, None)?;
        Ok(jobs
            .into_iter()
            .filter_map(|v| {
                let j: SchedulerJob = serde_json::from_value(v).ok()?;
                let ns = j.name.split('/').nth(1)?.to_string();
                Some((ns, j))
            })
            .collect())
    }

    pub fn get(&self, ns: &str, name: &str) -> Result<SchedulerJob, JobError> {
        self.store
            .get_object(kind::SCHEDULER_JOB, ns, name)?
            .ok_or_else(|| {
                JobError::NotFound(format!("scheduler job {name} not found in project {ns}"))
            })
    }

    pub fn list(&self, ns: &str) -> Result<Vec<SchedulerJob>, JobError> {
        Ok(self
            .store
            .list_objects(kind::SCHEDULER_JOB, Some(ns), None)?)
    }

    /// Creates (or, with `replace`, updates) a scheduler job.
    pub async fn put(
        &self,
        ns: &str,
        location: &str,
        mut j: SchedulerJob,
        replace: bool,
    ) -> Result<SchedulerJob, JobError> {
        let name = short_name(&j.name).to_string();
        j.name = format!("projects/{ns}/locations/{location}/jobs/{name}");
        validate(&j)?;
        if let Some(t) = &j.run_job_target {
            if self
                .store
                .get_object::<Job>(kind::JOB, ns, &t.job)?
                .is_none()
            {
                return Err(JobError::Invalid(format!(
                    "job {} not found in project {ns}: create it first",
                    t.job
                )));
            }
        }
        let _g = self.lock.lock().await;
        let old: Option<SchedulerJob> = self.store.get_object(kind::SCHEDULER_JOB, ns, &name)?;
        match (&old, replace) {
            (Some(_), false) => {
                return Err(JobError::Conflict(format!(
                    "scheduler job {name} already exists"
                )))
            }
            (None, true) => {
                return Err(JobError::NotFound(format!(
                    "scheduler job {name} not found in project {ns}"
                )))
            }
            _ => {}
        }
        if j.state.is_empty() {
            j.state = old
                .as_ref()
                .map_or(ENABLED.to_string(), |o| o.state.clone());
        }
        if j.state != ENABLED && j.state != PAUSED {
            return Err(JobError::Invalid(format!(
                "invalid state {:?}: use ENABLED or PAUSED",
                j.state
            )));
        }
        j.runs = old.as_ref().map(|o| o.runs.clone()).unwrap_or_default();
        j.last_attempt_time = old.as_ref().and_then(|o| o.last_attempt_time.clone());
        j.schedule_time = Some(
            next_after(&j.schedule, j.time_zone.as_deref(), Utc::now())?
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        j.user_update_time = Some(now_rfc3339());
        self.store
            .put_object(kind::SCHEDULER_JOB, ns, &name, "", &j)?;
        Ok(j)
    }

    pub async fn delete(&self, ns: &str, name: &str) -> Result<(), JobError> {
        let _g = self.lock.lock().await;
        if !self
            .store
            .delete_object(kind::SCHEDULER_JOB, ns, name, &[])?
        {
            return Err(JobError::NotFound(format!(
                "scheduler job {name} not found in project {ns}"
            )));
        }
        Ok(())
    }

    pub async fn set_state(
        &self,
        ns: &str,
        name: &str,
        state: &str,
    ) -> Result<SchedulerJob, JobError> {
        let _g = self.lock.lock().await;
        let mut j = self.get(ns, name)?;
        j.state = state.to_string();
        if state == ENABLED {
            let next = next_after(&j.schedule, j.time_zone.as_deref(), Utc::now())?;
            j.schedule_time = Some(next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        self.store
            .put_object(kind::SCHEDULER_JOB, ns, name, "", &j)?;
        Ok(j)
    }

    /// Runs a scheduler job now (`scheduler jobs run`); returns it with the run recorded.
    pub async fn run_now(self: &Arc<Self>, ns: &str, name: &str) -> Result<SchedulerJob, JobError> {
        self.get(ns, name)?;
        self.fire(ns, name, "manual").await;
        self.get(ns, name)
    }

    async fn fire(self: &Arc<Self>, ns: &str, name: &str, trigger: &str) {
        let Ok(j) = self.get(ns, name) else { return };
        let time = now_rfc3339();
        let outcome = match (&j.run_job_target, &j.http_target) {
            (Some(t), _) => self.run_job(ns, &t.job),
            (None, Some(h)) => self.call(h).await,
            (None, None) => Err("the scheduler job has no target".to_string()),
        };
        let (success, message) = match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        tracing::info!(scheduler_job = name, success, "{message}");
        let _g = self.lock.lock().await;
        if let Ok(mut j) = self.get(ns, name) {
            j.last_attempt_time = Some(time.clone());
            j.runs.push(SchedulerRun {
                time,
                trigger: trigger.to_string(),
                success,
                message,
            });
            let excess = j.runs.len().saturating_sub(KEEP_RUNS);
            j.runs.drain(..excess);
            let _ = self.store.put_object(kind::SCHEDULER_JOB, ns, name, "", &j);
        }
    }

    fn run_job(&self, ns: &str, job: &str) -> Result<String, String> {
        let j: Job = self
            .store
            .get_object(kind::JOB, ns, job)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("job {job} not found"))?;
        let e = self
            .jobs
            .execute(ns, &j, &Overrides::default())
            .map_err(|e| e.to_string())?;
        Ok(format!("started execution {}", e.metadata.name))
    }

    /// Calls an HTTP target, retrying with exponential backoff on failure.
    async fn call(&self, h: &skiff_model::HttpTarget) -> Result<String, String> {
        let url = reqwest::Url::parse(&h.uri).map_err(|e| format!("invalid uri {}: {e}", h.uri))?;
        let host = url.host_str().unwrap_or_default().to_string();
        // Skiff services answer on the local ingress, by Host header; an `https://` URL is
        // passed on as such (`X-Forwarded-Proto`), so the ingress does not redirect it.
        let forwarded_https = url.scheme() == "https";
        let (target, host_header) = if self.urls.is_service_host(&host) {
            let mut u = url.clone();
            let _ = u.set_scheme("http");
            let _ = u.set_host(Some("127.0.0.1"));
            let _ = u.set_port(Some(self.urls.http_port()));
            (u, Some(host.clone()))
        } else {
            (url.clone(), None)
        };
        let method =
            reqwest::Method::from_bytes(h.http_method.as_deref().unwrap_or("POST").as_bytes())
                .map_err(|e| e.to_string())?;
        let body = match &h.body {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let mut last = String::new();
        for attempt in 0..HTTP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let mut req = self
                .http
                .request(method.clone(), target.clone())
                .body(body.clone());
            for (k, v) in &h.headers {
                req = req.header(k, v);
            }
            if let Some(hh) = &host_header {
                req = req.header(reqwest::header::HOST, hh);
                if forwarded_https {
                    req = req.header("x-forwarded-proto", "https");
                }
                if !h
                    .headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("authorization"))
                {
                    req = req.bearer_auth((self.mint)(&h.uri));
                }
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    return Ok(format!("{} {} answered {}", method, h.uri, r.status()))
                }
                Ok(r) => last = format!("{} {} answered {}", method, h.uri, r.status()),
                Err(e) => last = format!("{} {} failed: {e}", method, h.uri),
            }
        }
        Err(format!("{last} (after {HTTP_ATTEMPTS} attempts)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_times() {
        let cases = [
            (
                "*/5 * * * *",
                None,
                "2026-01-01T10:02:00Z",
                "2026-01-01T10:05:00Z",
            ),
            (
                "0 9 * * *",
                Some("Europe/Paris"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T08:00:00Z",
            ),
            (
                "0 9 * * *",
                Some("Europe/Paris"),
                "2026-07-01T00:00:00Z",
                "2026-07-01T07:00:00Z",
            ),
            // DST starts in New York on 2026-03-08: 02:30 does not exist that day, so the run
            // happens when the clock jumps, at 03:00 EDT (as Vixie cron does), not a day late.
            (
                "30 2 * * *",
                Some("America/New_York"),
                "2026-03-08T05:00:00Z",
                "2026-03-08T07:00:00Z",
            ),
            (
                "30 2 * * *",
                Some("America/New_York"),
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
            ),
            // DST ends on 2026-11-01: 01:30 happens twice; it fires once, at the first.
            (
                "30 1 * * *",
                Some("America/New_York"),
                "2026-11-01T04:00:00Z",
                "2026-11-01T05:30:00Z",
            ),
            (
                "0 0 1 1 *",
                Some("Etc/UTC"),
                "2026-06-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
        ];
        for (sched, tz, after, want) in cases {
            let got = next_after(sched, tz, utc(after)).unwrap();
            assert_eq!(got, utc(want), "{sched} {tz:?} after {after}");
        }
        let after_first = next_after(
            "30 1 * * *",
            Some("America/New_York"),
            utc("2026-11-01T05:30:00Z"),
        )
        .unwrap();
        assert_eq!(
            after_first,
            utc("2026-11-02T06:30:00Z"),
            "the repeated hour does not fire twice"
        );
        assert_eq!(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            utc("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn bad_input() {
        for (sched, tz) in [
            ("* * *", None),
            ("61 * * * *", None),
            ("* * * * *", Some("Mars/Olympus")),
            ("not cron", None),
        ] {
            assert!(next_after(sched, tz, Utc::now()).is_err(), "{sched} {tz:?}");
        }
        let base = SchedulerJob {
            name: "projects/p/locations/l/jobs/nightly".into(),
            schedule: "0 3 * * *".into(),
            ..Default::default()
        };
        assert!(validate(&base).is_err(), "no target");
        let http = |uri: &str, method: Option<&str>| SchedulerJob {
            http_target: Some(skiff_model::HttpTarget {
                uri: uri.into(),
                http_method: method.map(String::from),
                ..Default::default()
            }),
            ..base.clone()
        };
        assert!(validate(&http("http://a.localhost/x", None)).is_ok());
        assert!(validate(&http("ftp://x", None)).is_err());
        assert!(validate(&http("http://x", Some("FETCH"))).is_err());
    }
}
