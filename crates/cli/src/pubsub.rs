//! `skiff pubsub topics|subscriptions ...`, in `gcloud pubsub`'s shape, over the Pub/Sub REST
//! API that the control API serves (`/v1/projects/P/topics/...`).

use crate::api::{encode, Api};
use crate::output::{print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Result};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum PubsubCommand {
    /// Manage topics
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Manage subscriptions
    Subscriptions {
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicsCommand {
    /// Create a topic
    Create {
        topic: String,
        /// How long published messages are kept for seeks (e.g. 1h, 7d)
        #[arg(long, value_name = "DURATION")]
        message_retention_duration: Option<String>,
    },
    /// List the project's topics
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a topic
    Describe {
        topic: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a topic (its subscriptions stay, detached)
    Delete { topic: String },
    /// Publish one message; prints its message id
    Publish {
        topic: String,
        /// The message's data
        #[arg(long, value_name = "MESSAGE")]
        message: Option<String>,
        /// Attributes, K=V,...
        #[arg(long, value_name = "K=V,...", value_delimiter = ',')]
        attribute: Vec<String>,
        /// Messages with the same ordering key are delivered in order
        #[arg(long, value_name = "KEY")]
        ordering_key: Option<String>,
    },
    #[command(flatten)]
    Iam(IamCommand),
}

#[derive(clap::Args, Debug)]
pub struct CreateSubscription {
    subscription: String,
    /// The topic it receives from
    #[arg(long)]
    topic: String,
    /// Seconds a pulled message stays leased before it is delivered again (10–600)
    #[arg(long, value_name = "SECONDS")]
    ack_deadline: Option<i32>,
    /// Push each message to this URL instead of waiting for pulls
    #[arg(long, value_name = "URL")]
    push_endpoint: Option<String>,
    /// Service account whose identity token push requests carry
    #[arg(long, value_name = "EMAIL")]
    push_auth_service_account: Option<String>,
    /// Audience of that token [default: the push endpoint]
    #[arg(long, value_name = "AUDIENCE")]
    push_auth_token_audience: Option<String>,
    /// Topic for messages that could not be delivered
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// Deliveries before a message goes to the dead-letter topic (5–100, default 5)
    #[arg(long, value_name = "N")]
    max_delivery_attempts: Option<i32>,
    /// Least delay before a nacked or expired message is delivered again (0s–600s)
    #[arg(long, value_name = "DURATION")]
    min_retry_delay: Option<String>,
    /// Most delay before a nacked or expired message is delivered again (0s–600s)
    #[arg(long, value_name = "DURATION")]
    max_retry_delay: Option<String>,
    /// Only messages whose attributes pass this filter are delivered
    #[arg(long, value_name = "FILTER")]
    message_filter: Option<String>,
    /// Deliver messages with the same ordering key in order
    #[arg(long)]
    enable_message_ordering: bool,
    /// Keep acknowledged messages, so that a seek to a time can deliver them again
    #[arg(long)]
    retain_acked_messages: bool,
    /// How long unacknowledged messages are kept (10m–31d, default 7d)
    #[arg(long, value_name = "DURATION")]
    message_retention_duration: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Create a subscription
    Create(Box<CreateSubscription>),
    /// List the project's subscriptions
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a subscription
    Describe {
        subscription: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a subscription and its backlog
    Delete { subscription: String },
    /// Pull messages now (without waiting for new ones)
    Pull {
        subscription: String,
        /// Acknowledge what is pulled
        #[arg(long)]
        auto_ack: bool,
        /// Most messages to pull
        #[arg(long, default_value_t = 1)]
        limit: u32,
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Acknowledge pulled messages
    Ack {
        subscription: String,
        #[arg(
            long,
            value_name = "ACK_ID,...",
            value_delimiter = ',',
            required = true
        )]
        ack_ids: Vec<String>,
    },
    /// Mark messages acknowledged or not, by time or to a snapshot
    Seek {
        subscription: String,
        /// Messages published before this RFC 3339 time count as acknowledged, later ones not
        #[arg(
            long,
            value_name = "TIME",
            conflicts_with = "snapshot",
            required_unless_present = "snapshot"
        )]
        time: Option<String>,
        /// Go back to what this snapshot held unacknowledged
        #[arg(long, value_name = "SNAPSHOT")]
        snapshot: Option<String>,
    },
    #[command(flatten)]
    Iam(IamCommand),
}

/// The IAM verbs topics and subscriptions share (gcloud's `add-iam-policy-binding`,
/// `remove-iam-policy-binding`, `get-iam-policy`).
#[derive(clap::Subcommand, Debug)]
pub enum IamCommand {
    /// Grant a role on it: --member serviceAccount:EMAIL --role roles/pubsub.publisher|subscriber|viewer|editor|admin
    AddIamPolicyBinding(PolicyBinding),
    /// Take a role binding away
    RemoveIamPolicyBinding(PolicyBinding),
    /// Show its IAM policy
    GetIamPolicy {
        name: String,
        /// json or yaml (the default)
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
}

/// A role binding to add or remove on a topic or subscription (gcloud's
/// `add-iam-policy-binding` flags).
#[derive(clap::Args, Debug)]
pub struct PolicyBinding {
    name: String,
    /// serviceAccount:EMAIL, user:EMAIL, group:EMAIL, domain:DOMAIN, allUsers or allAuthenticatedUsers
    #[arg(long, value_name = "MEMBER")]
    member: String,
    /// roles/pubsub.publisher, roles/pubsub.subscriber, roles/pubsub.viewer, roles/pubsub.editor or roles/pubsub.admin
    #[arg(long, value_name = "ROLE")]
    role: String,
}

/// Runs an IAM verb on a topic or subscription (`kind` is `topics` or `subscriptions`).
fn iam(api: &Api, kind: &str, cmd: IamCommand) -> Result<()> {
    let noun = &kind[..kind.len() - 1];
    let change = |b: PolicyBinding, add: bool| {
        let what = format!("{noun} [{}]", full(api, kind, &b.name));
        crate::services::change_policy_binding(
            api,
            &path(api, kind, &b.name)?,
            &what,
            &b.member,
            &b.role,
            add,
        )
    };
    match cmd {
        IamCommand::AddIamPolicyBinding(b) => change(b, true),
        IamCommand::RemoveIamPolicyBinding(b) => change(b, false),
        IamCommand::GetIamPolicy { name, format } => {
            crate::services::show_policy(api, &path(api, kind, &name)?, format)
        }
    }
}

fn path(api: &Api, kind: &str, name: &str) -> Result<String> {
    let id = name.rsplit('/').next().unwrap_or(name);
    if id.is_empty() {
        bail!("give a {kind} name");
    }
    Ok(format!(
        "/v1/projects/{}/{kind}/{}",
        encode(&api.project),
        encode(id)
    ))
}

fn full(api: &Api, kind: &str, name: &str) -> String {
    if name.starts_with("projects/") {
        name.to_string()
    } else {
        format!("projects/{}/{kind}/{name}", api.project)
    }
}

/// `30s`, `10m`, `7d` → the API's `"SECONDSs"`.
fn api_duration(flag: &str, s: &str) -> Result<String> {
    let d = match s.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => std::time::Duration::from_secs(days * 86_400),
        _ => skiff_model::parse_duration(s)
            .map_err(|e| anyhow!("invalid --{flag} {s:?}: {} (e.g. 10s, 10m, 7d)", e.0))?,
    };
    Ok(format!("{}s", d.as_secs_f64()))
}

fn attributes(list: &[String]) -> Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    for kv in list {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --attribute {kv:?}: give KEY=VALUE,..."))?;
        if k.is_empty() {
            bail!("invalid --attribute {kv:?}: the key is empty");
        }
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

fn short(name: &str) -> String {
    name.rsplit('/').next().unwrap_or(name).to_string()
}

pub fn run(api: &Api, cmd: PubsubCommand) -> Result<()> {
    match cmd {
        PubsubCommand::Topics { command } => topics(api, command),
        PubsubCommand::Subscriptions { command } => subscriptions(api, command),
    }
}

fn topics(api: &Api, cmd: TopicsCommand) -> Result<()> {
    match cmd {
        TopicsCommand::Iam(c) => iam(api, "topics", c)?,
        TopicsCommand::Create {
            topic,
            message_retention_duration,
        } => {
            let mut body = json!({});
            if let Some(d) = message_retention_duration {
                body["messageRetentionDuration"] =
                    json!(api_duration("message-retention-duration", &d)?);
            }
            let t: Value = api.send_json(Method::PUT, &path(api, "topics", &topic)?, &body)?;
            println!("Created topic [{}].", t["name"].as_str().unwrap_or(&topic));
        }
        TopicsCommand::List { format } => {
            let v: Value = api.get(
                &format!("/v1/projects/{}/topics", encode(&api.project)),
                &[],
            )?;
            let list = v["topics"].as_array().cloned().unwrap_or_default();
            if let Some(f) = format {
                return print_machine(&list, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| vec![short(t["name"].as_str().unwrap_or_default())])
                .collect();
            if rows.is_empty() {
                println!("Listed 0 items.");
            } else {
                print_table(&["TOPIC"], &rows);
            }
        }
        TopicsCommand::Describe { topic, format } => {
            let v: Value = api.get(&path(api, "topics", &topic)?, &[])?;
            print_machine(&v, format != Some(DescribeFormat::Json))?;
        }
        TopicsCommand::Delete { topic } => {
            api.delete(&path(api, "topics", &topic)?)?;
            println!("Deleted topic [{}].", full(api, "topics", &topic));
        }
        TopicsCommand::Publish {
            topic,
            message,
            attribute,
            ordering_key,
        } => {
            let attrs = attributes(&attribute)?;
            let data = message.unwrap_or_default();
            if data.is_empty() && attrs.is_empty() {
                bail!("give --message or at least one --attribute: a message needs data or attributes");
            }
            let mut m = json!({"data": base64::engine::general_purpose::STANDARD.encode(data)});
            if !attrs.is_empty() {
                m["attributes"] = Value::Object(attrs);
            }
            if let Some(k) = ordering_key {
                m["orderingKey"] = json!(k);
            }
            let v: Value = api.send_json(
                Method::POST,
                &format!("{}:publish", path(api, "topics", &topic)?),
                &json!({"messages": [m]}),
            )?;
            let ids = v["messageIds"].as_array().cloned().unwrap_or_default();
            println!("messageIds:");
            for id in ids {
                println!("- '{}'", id.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

fn create_body(api: &Api, a: &CreateSubscription) -> Result<Value> {
    let mut body = json!({"topic": full(api, "topics", &a.topic)});
    if let Some(d) = a.ack_deadline {
        body["ackDeadlineSeconds"] = json!(d);
    }
    if let Some(url) = &a.push_endpoint {
        let mut pc = json!({"pushEndpoint": url});
        if let Some(sa) = &a.push_auth_service_account {
            pc["oidcToken"] = json!({"serviceAccountEmail": sa, "audience": a.push_auth_token_audience.clone().unwrap_or_default()});
        }
        body["pushConfig"] = pc;
    } else if a.push_auth_service_account.is_some() {
        bail!("--push-auth-service-account needs --push-endpoint");
    }
    match (&a.dead_letter_topic, a.max_delivery_attempts) {
        (Some(t), n) => {
            body["deadLetterPolicy"] = json!({"deadLetterTopic": full(api, "topics", t), "maxDeliveryAttempts": n.unwrap_or(0)});
        }
        (None, Some(_)) => bail!("--max-delivery-attempts needs --dead-letter-topic"),
        (None, None) => {}
    }
    if a.min_retry_delay.is_some() || a.max_retry_delay.is_some() {
        let mut rp = json!({});
        if let Some(d) = &a.min_retry_delay {
            rp["minimumBackoff"] = json!(api_duration("min-retry-delay", d)?);
        }
        if let Some(d) = &a.max_retry_delay {
            rp["maximumBackoff"] = json!(api_duration("max-retry-delay", d)?);
        }
        body["retryPolicy"] = rp;
    }
    if let Some(f) = &a.message_filter {
        body["filter"] = json!(f);
    }
    if a.enable_message_ordering {
        body["enableMessageOrdering"] = json!(true);
    }
    if a.retain_acked_messages {
        body["retainAckedMessages"] = json!(true);
    }
    if let Some(d) = &a.message_retention_duration {
        body["messageRetentionDuration"] = json!(api_duration("message-retention-duration", d)?);
    }
    Ok(body)
}

fn subscriptions(api: &Api, cmd: SubscriptionsCommand) -> Result<()> {
    match cmd {
        SubscriptionsCommand::Iam(c) => iam(api, "subscriptions", c)?,
        SubscriptionsCommand::Create(a) => {
            let body = create_body(api, &a)?;
            let s: Value = api.send_json(
                Method::PUT,
                &path(api, "subscriptions", &a.subscription)?,
                &body,
            )?;
            println!(
                "Created subscription [{}].",
                s["name"].as_str().unwrap_or(&a.subscription)
            );
        }
        SubscriptionsCommand::List { format } => {
            let v: Value = api.get(
                &format!("/v1/projects/{}/subscriptions", encode(&api.project)),
                &[],
            )?;
            let list = v["subscriptions"].as_array().cloned().unwrap_or_default();
            if let Some(f) = format {
                return print_machine(&list, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let push = s["pushConfig"]["pushEndpoint"].as_str().unwrap_or_default();
                    vec![
                        short(s["name"].as_str().unwrap_or_default()),
                        short(s["topic"].as_str().unwrap_or_default()),
                        if push.is_empty() {
                            "pull".into()
                        } else {
                            format!("push {push}")
                        },
                        s["ackDeadlineSeconds"].to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("Listed 0 items.");
            } else {
                print_table(
                    &["SUBSCRIPTION", "TOPIC", "DELIVERY", "ACK_DEADLINE"],
                    &rows,
                );
            }
        }
        SubscriptionsCommand::Describe {
            subscription,
            format,
        } => {
            let v: Value = api.get(&path(api, "subscriptions", &subscription)?, &[])?;
            print_machine(&v, format != Some(DescribeFormat::Json))?;
        }
        SubscriptionsCommand::Delete { subscription } => {
            api.delete(&path(api, "subscriptions", &subscription)?)?;
            println!(
                "Deleted subscription [{}].",
                full(api, "subscriptions", &subscription)
            );
        }
        SubscriptionsCommand::Pull {
            subscription,
            auto_ack,
            limit,
            format,
        } => {
            if limit == 0 {
                bail!("--limit must be at least 1");
            }
            let p = path(api, "subscriptions", &subscription)?;
            let v: Value = api.send_json(
                Method::POST,
                &format!("{p}:pull"),
                &json!({"maxMessages": limit, "returnImmediately": true}),
            )?;
            let got = v["receivedMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if auto_ack && !got.is_empty() {
                let ids: Vec<&str> = got.iter().filter_map(|r| r["ackId"].as_str()).collect();
                let _: Value = api.send_json(
                    Method::POST,
                    &format!("{p}:acknowledge"),
                    &json!({ "ackIds": ids }),
                )?;
            }
            if let Some(f) = format {
                return print_machine(&got, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = got
                .iter()
                .map(|r| {
                    let m = &r["message"];
                    let data = m["data"]
                        .as_str()
                        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                        .map(|d| String::from_utf8_lossy(&d).into_owned())
                        .unwrap_or_default();
                    let attrs = m["attributes"]
                        .as_object()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        data,
                        m["messageId"].as_str().unwrap_or_default().to_string(),
                        m["orderingKey"].as_str().unwrap_or_default().to_string(),
                        attrs,
                        r["deliveryAttempt"]
                            .as_i64()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        if auto_ack {
                            "SUCCESS".into()
                        } else {
                            r["ackId"].as_str().unwrap_or_default().to_string()
                        },
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("Listed 0 items.");
            } else {
                print_table(
                    &[
                        "DATA",
                        "MESSAGE_ID",
                        "ORDERING_KEY",
                        "ATTRIBUTES",
                        "DELIVERY_ATTEMPT",
                        if auto_ack { "ACK_STATUS" } else { "ACK_ID" },
                    ],
                    &rows,
                );
            }
        }
        SubscriptionsCommand::Ack {
            subscription,
            ack_ids,
        } => {
            let p = path(api, "subscriptions", &subscription)?;
            let _: Value = api.send_json(
                Method::POST,
                &format!("{p}:acknowledge"),
                &json!({ "ackIds": ack_ids }),
            )?;
            println!("Acknowledged {} message(s).", ack_ids.len());
        }
        SubscriptionsCommand::Seek {
            subscription,
            time,
            snapshot,
        } => {
            let p = path(api, "subscriptions", &subscription)?;
            let body = match (time, snapshot) {
                (Some(t), _) => {
                    chrono::DateTime::parse_from_rfc3339(&t).map_err(|e| {
                        anyhow!("invalid --time {t:?}: {e}: give an RFC 3339 time like 2024-01-01T00:00:00Z")
                    })?;
                    json!({ "time": t })
                }
                (None, Some(s)) => json!({ "snapshot": full(api, "snapshots", &s) }),
                (None, None) => bail!("give --time or --snapshot"),
            };
            let _: Value = api.send_json(Method::POST, &format!("{p}:seek"), &body)?;
            println!("Sought {}.", full(api, "subscriptions", &subscription));
        }
    }
    Ok(())
}
