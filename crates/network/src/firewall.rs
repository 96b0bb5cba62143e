//! The server's nftables rules, applied and removed through the `nftables` crate (which drives
//! `nft -j`, the JSON API of the nftables project's own tool).
//!
//! Two tables, both named after the server (`skiff_<id>`), so that two servers on one machine
//! never touch each other's rules:
//!
//! - `inet skiff_<id>`:
//!   - `prerouting` (nat): traffic from the bridge to `169.254.169.254:80` is sent to the
//!     metadata server on the gateway address.
//!   - `postrouting` (nat): traffic from the instance subnet that leaves by another interface is
//!     masqueraded behind the host's address.
//!   - `input` (filter): from the bridge, the host accepts only DNS (53) and the metadata
//!     server (80) on the gateway address, and the ingress port; everything else an instance
//!     sends to any of the host's own addresses is dropped.
//!   - `forward` (filter): nothing is forwarded into the bridge but replies; from the bridge,
//!     the deny list (the instance subnet itself, link-local, loopback, multicast, and the
//!     server's `--network-deny` CIDRs) is dropped and the rest accepted.
//! - `bridge skiff_<id>`: no frame is bridged from one instance's interface to another's.

use crate::NetworkError;
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::net::Ipv4Addr;

/// What the rules are made of.
pub(crate) struct Rules<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    /// Every instance's host-side interface name starts with it.
    pub veth_prefix: &'a str,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Ports on the gateway that instances may open over TCP (DNS and metadata besides).
    pub host_ports: Vec<u16>,
    pub deny: &'a [Ipv4Net],
}

/// The set that counts, per instance address, the bytes forwarded to the internet.
pub const EGRESS_SET: &str = "egress";

/// The metadata server's well-known address (Cloud Run's container contract).
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn meta(key: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}})
}

fn payload(protocol: &str, field: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": field}}, "right": right}})
}

fn prefix(net: &Ipv4Net) -> Value {
    json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
}

fn ct_state(states: &[&str]) -> Value {
    json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
}

impl Rules<'_> {
    fn rule(&self, family: &str, chain: &str, expr: Vec<Value>) -> Value {
        json!({"add": {"rule": {"family": family, "table": self.table, "chain": chain, "expr": expr}}})
    }

    fn chain(&self, family: &str, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
        json!({"add": {"chain": {"family": family, "table": self.table, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
    }

    /// The whole ruleset as one `nft -j` batch: it replaces any earlier table of the same
    /// name atomically (add, delete, add again is nftables' idiom for that).
    pub fn batch(&self) -> Value {
        let t = self.table;
        let br = json!(self.bridge);
        let gw = json!(self.gateway.to_string());
        let mut deny: Vec<Value> = vec![
            prefix(&self.subnet),
            prefix(&Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix")),
            prefix(&Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16).expect("valid prefix")),
            prefix(&Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix")),
        ];
        deny.extend(self.deny.iter().map(prefix));
        let mut tcp_ports = vec![53u16, 80];
        tcp_ports.extend(&self.host_ports);
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        let cmds = vec![
            json!({"add": {"table": {"family": "inet", "name": t}}}),
            json!({"delete": {"table": {"family": "inet", "name": t}}}),
            json!({"add": {"table": {"family": "inet", "name": t}}}),
            json!({"add": {"table": {"family": "bridge", "name": t}}}),
            json!({"delete": {"table": {"family": "bridge", "name": t}}}),
            json!({"add": {"table": {"family": "bridge", "name": t}}}),
            // Bytes each instance address sent to the internet: a counter per address,
            // added by the packet path on first use (`update`), removed with the address.
            json!({"add": {"set": {"family": "inet", "table": t, "name": EGRESS_SET,
                "type": "ipv4_addr", "size": 65535, "stmt": [{"counter": null}]}}}),
            self.chain("inet", "prerouting", "nat", "prerouting", -100),
            self.chain("inet", "postrouting", "nat", "postrouting", 100),
            self.chain("inet", "input", "filter", "input", 0),
            self.chain("inet", "forward", "filter", "forward", 0),
            self.chain("bridge", "forward", "filter", "forward", 0),
            self.rule(
                "inet",
                "prerouting",
                vec![
                    meta("iifname", "==", br.clone()),
                    payload("ip", "daddr", json!(METADATA_ADDR.to_string())),
                    payload("tcp", "dport", json!(80)),
                    json!({"dnat": {"family": "ip", "addr": self.gateway.to_string(), "port": 80}}),
                ],
            ),
            self.rule(
                "inet",
                "postrouting",
                vec![
                    payload("ip", "saddr", prefix(&self.subnet)),
                    meta("oifname", "!=", br.clone()),
                    json!({"masquerade": null}),
                ],
            ),
            self.rule(
                "inet",
                "input",
                vec![
                    meta("iifname", "==", br.clone()),
                    ct_state(&["established", "related"]),
                    json!({"accept": null}),
                ],
            ),
            self.rule(
                "inet",
                "input",
                vec![
                    meta("iifname", "==", br.clone()),
                    payload("ip", "daddr", gw.clone()),
                    payload("udp", "dport", json!(53)),
                    json!({"accept": null}),
                ],
            ),
            self.rule(
                "inet",
                "input",
                vec![
                    meta("iifname", "==", br.clone()),
                    payload("ip", "daddr", gw.clone()),
                    payload("tcp", "dport", json!({"set": tcp_ports})),
                    json!({"accept": null}),
                ],
            ),
            // ARP is not IP: it never reaches this chain. DHCP and the like have no server.
            self.rule(
                "inet",
                "input",
                vec![meta("iifname", "==", br.clone()), json!({"drop": null})],
            ),
            self.rule(
                "inet",
                "forward",
                vec![
                    meta("oifname", "==", br.clone()),
                    ct_state(&["established", "related"]),
                    json!({"accept": null}),
                ],
            ),
            self.rule(
                "inet",
                "forward",
                vec![meta("oifname", "==", br.clone()), json!({"drop": null})],
            ),
            self.rule(
                "inet",
                "forward",
                vec![
                    meta("iifname", "==", br.clone()),
                    payload("ip", "daddr", json!({"set": deny})),
                    json!({"drop": null}),
                ],
            ),
            // What is left is forwarded: count it per source address.
            self.rule(
                "inet",
                "forward",
                vec![
                    meta("iifname", "==", br.clone()),
                    meta("nfproto", "==", json!("ipv4")),
                    json!({"set": {"op": "update",
                        "elem": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "set": format!("@{EGRESS_SET}")}}),
                ],
            ),
            // No IPv6 is routed for instances.
            self.rule(
                "inet",
                "forward",
                vec![
                    meta("iifname", "==", br.clone()),
                    meta("nfproto", "==", json!("ipv6")),
                    json!({"drop": null}),
                ],
            ),
            self.rule(
                "bridge",
                "forward",
                vec![
                    meta("iifname", "==", json!(format!("{}*", self.veth_prefix))),
                    meta("oifname", "==", json!(format!("{}*", self.veth_prefix))),
                    json!({"drop": null}),
                ],
            ),
        ];
        json!({"nftables": cmds})
    }

    /// Removes both tables, if present.
    pub fn delete_batch(table: &str) -> Value {
        let mut cmds = Vec::new();
        for family in ["inet", "bridge"] {
            cmds.push(json!({"add": {"table": {"family": family, "name": table}}}));
            cmds.push(json!({"delete": {"table": {"family": family, "name": table}}}));
        }
        json!({"nftables": cmds})
    }
}

/// Forgets an address's egress counter (before the address is handed out again).
pub(crate) fn forget_egress(table: &str, ip: Ipv4Addr) -> Result<(), NetworkError> {
    apply(
        &json!({"nftables": [{"delete": {"element": {"family": "inet", "table": table,
        "name": EGRESS_SET, "elem": [ip.to_string()]}}}]}),
    )
}

/// Reads the egress counters: address → bytes.
pub(crate) fn egress_counters(
    table: &str,
) -> Result<std::collections::HashMap<Ipv4Addr, u64>, NetworkError> {
    let out = nftables::helper::get_current_ruleset_raw(
        None::<&str>,
        ["list", "set", "inet", table, EGRESS_SET],
    )
    .map_err(|e| NetworkError::Firewall(e.to_string()))?;
    let v: Value = serde_json::from_str(&out)
        .map_err(|e| NetworkError::Firewall(format!("unexpected output of nft: {e}")))?;
    let mut counters = std::collections::HashMap::new();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        for e in obj["set"]["elem"].as_array().into_iter().flatten() {
            let ip = e["elem"]["val"].as_str().and_then(|s| s.parse().ok());
            let bytes = e["elem"]["counter"]["bytes"].as_u64();
            if let (Some(ip), Some(bytes)) = (ip, bytes) {
                counters.insert(ip, bytes);
            }
        }
    }
    Ok(counters)
}

/// Applies a batch; the error carries `nft`'s own message. The JSON goes to `nft` as built:
/// the crate's typed schema does not carry every field used here (a set's per-element
/// `counter`), so it checks the shape in the unit tests instead.
pub(crate) fn apply(batch: &Value) -> Result<(), NetworkError> {
    nftables::helper::apply_ruleset_raw(&batch.to_string(), None::<&str>, Vec::<&str>::new())
        .map(|_| ())
        .map_err(|e| {
            NetworkError::Firewall(match e {
                nftables::helper::NftablesError::NftExecution { inner, .. }
                    if inner.kind() == std::io::ErrorKind::NotFound =>
                {
                    "the nft program is missing: install Debian's nftables package".into()
                }
                other => other.to_string(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_fits_the_schema() {
        let deny = [Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).expect("valid prefix")];
        let rules = Rules {
            table: "skiff_test",
            bridge: "skiff0",
            veth_prefix: "sk0000",
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 16).expect("valid prefix"),
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            host_ports: vec![8080],
            deny: &deny,
        };
        let batch = rules.batch();
        for cmd in batch["nftables"].as_array().unwrap() {
            let one = json!({"nftables": [cmd]});
            if let Err(e) = serde_json::from_value::<nftables::schema::Nftables>(one) {
                panic!("{cmd}: {e}");
            }
        }
        let parsed: nftables::schema::Nftables =
            serde_json::from_value(batch.clone()).expect("schema");
        assert_eq!(
            parsed.objects.len(),
            batch["nftables"].as_array().unwrap().len()
        );
        let text = batch.to_string();
        assert!(text.contains("192.168.0.0"));
        assert!(text.contains("masquerade"));
        let _: nftables::schema::Nftables =
            serde_json::from_value(Rules::delete_batch("skiff_test")).expect("schema");
    }
}
