//! Prices and cost. The defaults are Cloud Run's tier-1 list prices and its monthly free tier.

use crate::Billing;
use serde::{Deserialize, Serialize};

/// Prices of one billing mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rates {
    /// Dollars per vCPU-second.
    pub vcpu_second: f64,
    /// Dollars per GiB-second.
    pub gib_second: f64,
    /// Dollars per million requests.
    pub million_requests: f64,
}

/// What is free each calendar month, summed over every service and job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreeTier {
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
    pub requests: f64,
    /// GiB of outbound internet data transfer.
    #[serde(default = "default_free_egress")]
    pub egress_gib: f64,
}

fn default_free_egress() -> f64 {
    1.0
}

/// Networking prices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkRates {
    /// Dollars per GiB of outbound internet data transfer.
    pub egress_gib: f64,
}

impl Default for NetworkRates {
    /// Cloud Run's outbound internet data transfer from North America (Premium Tier, first
    /// tier): $0.12 per GiB.
    fn default() -> Self {
        NetworkRates { egress_gib: 0.12 }
    }
}

/// The price table (`skiff server --prices FILE`, YAML or JSON in this shape).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prices {
    #[serde(default = "default_currency")]
    pub currency: Currency,
    pub request_based: Rates,
    pub instance_based: Rates,
    pub free_tier: FreeTier,
    #[serde(default)]
    pub networking: NetworkRates,
}

/// The currency prices are in (only its code is shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Currency {
    USD,
}

fn default_currency() -> Currency {
    Currency::USD
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            currency: Currency::USD,
            request_based: Rates {
                vcpu_second: 0.000024,
                gib_second: 0.0000025,
                million_requests: 0.40,
            },
            instance_based: Rates {
                vcpu_second: 0.000018,
                gib_second: 0.000002,
                million_requests: 0.0,
            },
            free_tier: FreeTier {
                vcpu_seconds: 180_000.0,
                gib_seconds: 360_000.0,
                requests: 2_000_000.0,
                egress_gib: 1.0,
            },
            networking: NetworkRates::default(),
        }
    }
}

/// Billable usage in one billing mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub requests: u64,
    pub billable_seconds: f64,
    pub vcpu_seconds: f64,
    pub gib_seconds: f64,
}

impl Usage {
    /// `billable_ms` of an instance with `cpu_millis` and `memory_bytes` limits.
    pub fn of(billable_ms: i64, requests: u64, cpu_millis: u64, memory_bytes: u64) -> Usage {
        let secs = billable_ms as f64 / 1000.0;
        Usage {
            requests,
            billable_seconds: secs,
            vcpu_seconds: secs * cpu_millis as f64 / 1000.0,
            gib_seconds: secs * memory_bytes as f64 / (1u64 << 30) as f64,
        }
    }

    pub fn add(&mut self, o: &Usage) {
        self.requests += o.requests;
        self.billable_seconds += o.billable_seconds;
        self.vcpu_seconds += o.vcpu_seconds;
        self.gib_seconds += o.gib_seconds;
    }
}

/// Cost in dollars, by what it is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub cpu: f64,
    pub memory: f64,
    pub requests: f64,
    /// Outbound internet data transfer.
    #[serde(default)]
    pub networking: f64,
    pub total: f64,
}

impl Prices {
    pub fn rates(&self, mode: Billing) -> &Rates {
        match mode {
            Billing::Request => &self.request_based,
            Billing::Instance => &self.instance_based,
        }
    }

    /// List-price cost of `u`, billed in `mode` (requests are billed only request-based).
    pub fn cost(&self, mode: Billing, u: &Usage) -> Cost {
        let r = self.rates(mode);
        let requests = match mode {
            Billing::Request => u.requests as f64 * r.million_requests / 1e6,
            Billing::Instance => 0.0,
        };
        let cpu = u.vcpu_seconds * r.vcpu_second;
        let memory = u.gib_seconds * r.gib_second;
        Cost {
            cpu,
            memory,
            requests,
            networking: 0.0,
            total: cpu + memory + requests,
        }
    }

    /// List-price cost of `bytes` of outbound internet data transfer.
    pub fn egress_cost(&self, bytes: u64) -> f64 {
        bytes as f64 / (1u64 << 30) as f64 * self.networking.egress_gib
    }

    /// The free tier's worth for one month's `bytes` of outbound internet data transfer.
    pub fn free_egress_credit(&self, bytes: u64) -> f64 {
        let gib = bytes as f64 / (1u64 << 30) as f64;
        gib.min(self.free_tier.egress_gib).max(0.0) * self.networking.egress_gib
    }

    /// The free tier's worth for one month's usage, by mode: each free allowance is used up by
    /// request-based usage first (it is the dearer), then instance-based.
    pub fn free_tier_credit(&self, request: &Usage, instance: &Usage) -> Cost {
        let f = &self.free_tier;
        let mut credit = Cost::default();
        let take = |free: &mut f64, used: f64, price: f64| -> f64 {
            let t = used.min(*free).max(0.0);
            *free -= t;
            t * price
        };
        let (mut cpu, mut mem, mut req) = (f.vcpu_seconds, f.gib_seconds, f.requests);
        for (mode, u) in [(Billing::Request, request), (Billing::Instance, instance)] {
            let r = self.rates(mode);
            credit.cpu += take(&mut cpu, u.vcpu_seconds, r.vcpu_second);
            credit.memory += take(&mut mem, u.gib_seconds, r.gib_second);
            if mode == Billing::Request {
                credit.requests += take(&mut req, u.requests as f64, r.million_requests / 1e6);
            }
        }
        credit.total = credit.cpu + credit.memory + credit.requests;
        credit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_cost_at_list_prices() {
        // 3.4 s of a 1 vCPU, 512 MiB instance and 10 requests.
        let u = Usage::of(3400, 10, 1000, 512 << 20);
        assert!((u.vcpu_seconds - 3.4).abs() < 1e-9);
        assert!((u.gib_seconds - 1.7).abs() < 1e-9);
        let p = Prices::default();
        let c = p.cost(Billing::Request, &u);
        let want = 3.4 * 0.000024 + 1.7 * 0.0000025 + 10.0 * 0.4 / 1e6;
        assert!((c.total - want).abs() < 1e-12, "{c:?}");
        let c = p.cost(Billing::Instance, &u);
        assert!((c.total - (3.4 * 0.000018 + 1.7 * 0.000002)).abs() < 1e-12);
        assert_eq!(c.requests, 0.0);
    }

    #[test]
    fn free_tier_is_shared_and_request_based_first() {
        let p = Prices::default();
        let req = Usage {
            requests: 3_000_000,
            billable_seconds: 0.0,
            vcpu_seconds: 100_000.0,
            gib_seconds: 400_000.0,
        };
        let inst = Usage {
            requests: 5,
            billable_seconds: 0.0,
            vcpu_seconds: 100_000.0,
            gib_seconds: 10.0,
        };
        let c = p.free_tier_credit(&req, &inst);
        let want_cpu = 100_000.0 * 0.000024 + 80_000.0 * 0.000018;
        let want_mem = 360_000.0 * 0.0000025;
        let want_req = 2_000_000.0 * 0.4 / 1e6;
        assert!((c.cpu - want_cpu).abs() < 1e-9, "{c:?}");
        assert!((c.memory - want_mem).abs() < 1e-9);
        assert!((c.requests - want_req).abs() < 1e-9);
    }

    #[test]
    fn a_price_file_names_what_is_wrong() {
        let text = r#"{"requestBased":{"vcpuSecond":1,"gibSecond":1,"millionRequests":1},
            "instanceBased":{"vcpuSecond":1,"gibSecond":1,"millionRequests":0},
            "freeTier":{"vcpuSeconds":0,"gibSeconds":0,"requests":0},"oops":1}"#;
        let e = serde_json::from_str::<Prices>(text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("oops"), "{e}");
        let round: Prices =
            serde_json::from_str(&serde_json::to_string(&Prices::default()).unwrap()).unwrap();
        assert_eq!(round, Prices::default());
    }
}
