//! The `google.pubsub.v1` Publisher and Subscriber gRPC services over [`Broker`], including
//! StreamingPull with flow control (`maxOutstandingMessages`) and acks and deadline changes
//! sent on the stream.

use crate::broker::{now_ms, Broker};
use crate::error::PubsubError;
use crate::names::{self, Kind};
use crate::proto::publisher_server::{Publisher, PublisherServer};
use crate::proto::subscriber_server::{Subscriber, SubscriberServer};
use crate::proto::*;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

/// Both services over one broker.
#[derive(Clone)]
pub struct Grpc {
    broker: Arc<Broker>,
}

impl Grpc {
    /// The services, ready for a tonic router: `(publisher, subscriber)`.
    pub fn services(broker: Arc<Broker>) -> (PublisherServer<Grpc>, SubscriberServer<Grpc>) {
        let g = Grpc { broker };
        (PublisherServer::new(g.clone()), SubscriberServer::new(g))
    }
}

type R<T> = Result<Response<T>, Status>;

/// One page of `items` (sorted by name) after `token` (the last name of the previous page).
pub fn page<T>(
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
    size: i32,
    token: &str,
) -> (Vec<T>, String) {
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|t| token.is_empty() || name(t) > token)
        .collect();
    if size > 0 && rest.len() > size as usize {
        rest.truncate(size as usize);
        let next = rest.last().map(|t| name(t).to_string()).unwrap_or_default();
        (rest, next)
    } else {
        (rest, String::new())
    }
}

fn project(p: &str) -> Result<String, Status> {
    let ok = p.starts_with("projects/") && p.split('/').count() == 2 && p.len() > 9;
    if ok {
        Ok(p.to_string())
    } else {
        Err(PubsubError::invalid(format!(
            "Invalid project given (project={p}): give projects/PROJECT"
        ))
        .into())
    }
}

/// The caller the listener recorded (see [`crate::iam`]); the admin when there is none.
fn caller<T>(req: &Request<T>) -> crate::iam::Caller {
    req.extensions()
        .get::<crate::iam::Caller>()
        .cloned()
        .unwrap_or(crate::iam::Caller::Admin)
}

impl Grpc {
    /// Checks that the caller of `req` holds `permission` on `resource` (`None`: a call on the
    /// project, which only the admin makes).
    fn allow<T>(
        &self,
        req: &Request<T>,
        resource: Option<&str>,
        permission: &str,
    ) -> Result<(), Status> {
        let who = caller(req);
        match resource {
            Some(r) => self.broker.authorize(&who, r, permission)?,
            None if who == crate::iam::Caller::Admin => {}
            None => return Err(crate::iam::denied(permission, "the project").into()),
        }
        Ok(())
    }
}

fn mask(m: Option<prost_types::FieldMask>) -> Vec<String> {
    m.map(|m| m.paths).unwrap_or_default()
}

#[tonic::async_trait]
impl Publisher for Grpc {
    async fn create_topic(&self, req: Request<Topic>) -> R<Topic> {
        self.allow(&req, None, "pubsub.topics.create")?;
        Ok(Response::new(
            self.broker.create_topic(req.into_inner()).await?,
        ))
    }
    async fn update_topic(&self, req: Request<UpdateTopicRequest>) -> R<Topic> {
        self.allow(
            &req,
            req.get_ref().topic.as_ref().map(|t| t.name.as_str()),
            "pubsub.topics.update",
        )?;
        let r = req.into_inner();
        let topic = r
            .topic
            .ok_or_else(|| PubsubError::invalid("UpdateTopicRequest needs a topic"))?;
        Ok(Response::new(
            self.broker
                .update_topic(topic, &mask(r.update_mask))
                .await?,
        ))
    }
    async fn publish(&self, req: Request<PublishRequest>) -> R<PublishResponse> {
        self.allow(&req, Some(&req.get_ref().topic), "pubsub.topics.publish")?;
        let r = req.into_inner();
        names::check(Kind::Topic, &r.topic)?;
        let message_ids = self.broker.publish(&r.topic, r.messages).await?;
        Ok(Response::new(PublishResponse { message_ids }))
    }
    async fn get_topic(&self, req: Request<GetTopicRequest>) -> R<Topic> {
        self.allow(&req, Some(&req.get_ref().topic), "pubsub.topics.get")?;
        Ok(Response::new(
            self.broker.get_topic(&req.into_inner().topic)?,
        ))
    }
    async fn list_topics(&self, req: Request<ListTopicsRequest>) -> R<ListTopicsResponse> {
        self.allow(&req, None, "pubsub.topics.list")?;
        let r = req.into_inner();
        let all = self.broker.list_topics(&project(&r.project)?);
        let (topics, next_page_token) = page(all, |t| &t.name, r.page_size, &r.page_token);
        Ok(Response::new(ListTopicsResponse {
            topics,
            next_page_token,
        }))
    }
    async fn list_topic_subscriptions(
        &self,
        req: Request<ListTopicSubscriptionsRequest>,
    ) -> R<ListTopicSubscriptionsResponse> {
        self.allow(&req, Some(&req.get_ref().topic), "pubsub.topics.get")?;
        let r = req.into_inner();
        let all = self.broker.topic_subscriptions(&r.topic)?;
        let (subscriptions, next_page_token) = page(all, |s| s, r.page_size, &r.page_token);
        Ok(Response::new(ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }
    async fn list_topic_snapshots(
        &self,
        req: Request<ListTopicSnapshotsRequest>,
    ) -> R<ListTopicSnapshotsResponse> {
        self.allow(&req, Some(&req.get_ref().topic), "pubsub.topics.get")?;
        let r = req.into_inner();
        let all = self.broker.topic_snapshots(&r.topic)?;
        let (snapshots, next_page_token) = page(all, |s| s, r.page_size, &r.page_token);
        Ok(Response::new(ListTopicSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }
    async fn delete_topic(&self, req: Request<DeleteTopicRequest>) -> R<()> {
        self.allow(&req, Some(&req.get_ref().topic), "pubsub.topics.delete")?;
        self.broker.delete_topic(&req.into_inner().topic).await?;
        Ok(Response::new(()))
    }
    async fn detach_subscription(
        &self,
        req: Request<DetachSubscriptionRequest>,
    ) -> R<DetachSubscriptionResponse> {
        self.allow(&req, None, "pubsub.topics.detachSubscription")?;
        self.broker
            .detach_subscription(&req.into_inner().subscription)
            .await?;
        Ok(Response::new(DetachSubscriptionResponse {}))
    }
}

type PullStream =
    Pin<Box<dyn futures::Stream<Item = Result<StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Subscriber for Grpc {
    async fn create_subscription(&self, req: Request<Subscription>) -> R<Subscription> {
        self.allow(&req, None, "pubsub.subscriptions.create")?;
        Ok(Response::new(
            self.broker.create_subscription(req.into_inner()).await?,
        ))
    }
    async fn get_subscription(&self, req: Request<GetSubscriptionRequest>) -> R<Subscription> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.get",
        )?;
        Ok(Response::new(
            self.broker
                .get_subscription(&req.into_inner().subscription)?,
        ))
    }
    async fn update_subscription(
        &self,
        req: Request<UpdateSubscriptionRequest>,
    ) -> R<Subscription> {
        self.allow(
            &req,
            req.get_ref().subscription.as_ref().map(|s| s.name.as_str()),
            "pubsub.subscriptions.update",
        )?;
        let r = req.into_inner();
        let sub = r.subscription.ok_or_else(|| {
            PubsubError::invalid("UpdateSubscriptionRequest needs a subscription")
        })?;
        Ok(Response::new(
            self.broker
                .update_subscription(sub, &mask(r.update_mask))
                .await?,
        ))
    }
    async fn list_subscriptions(
        &self,
        req: Request<ListSubscriptionsRequest>,
    ) -> R<ListSubscriptionsResponse> {
        self.allow(&req, None, "pubsub.subscriptions.list")?;
        let r = req.into_inner();
        let all = self.broker.list_subscriptions(&project(&r.project)?);
        let (subscriptions, next_page_token) = page(all, |s| &s.name, r.page_size, &r.page_token);
        Ok(Response::new(ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }
    async fn delete_subscription(&self, req: Request<DeleteSubscriptionRequest>) -> R<()> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.delete",
        )?;
        self.broker
            .delete_subscription(&req.into_inner().subscription)
            .await?;
        Ok(Response::new(()))
    }
    async fn modify_ack_deadline(&self, req: Request<ModifyAckDeadlineRequest>) -> R<()> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.consume",
        )?;
        let r = req.into_inner();
        self.broker
            .modify_ack_deadline(&r.subscription, &r.ack_ids, r.ack_deadline_seconds)?;
        Ok(Response::new(()))
    }
    async fn acknowledge(&self, req: Request<AcknowledgeRequest>) -> R<()> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.consume",
        )?;
        let r = req.into_inner();
        self.broker.acknowledge(&r.subscription, &r.ack_ids).await?;
        Ok(Response::new(()))
    }
    async fn pull(&self, req: Request<PullRequest>) -> R<PullResponse> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.consume",
        )?;
        #[allow(deprecated)]
        let immediate = req.get_ref().return_immediately;
        let r = req.into_inner();
        let wait = if immediate {
            Duration::ZERO
        } else {
            crate::broker::PULL_WAIT
        };
        let received_messages = self
            .broker
            .pull(&r.subscription, r.max_messages.max(0) as usize, wait)
            .await?;
        Ok(Response::new(PullResponse { received_messages }))
    }

    type StreamingPullStream = PullStream;

    async fn streaming_pull(
        &self,
        req: Request<Streaming<StreamingPullRequest>>,
    ) -> R<Self::StreamingPullStream> {
        let who = caller(&req);
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| PubsubError::invalid("StreamingPull needs an initial request"))?;
        let sub = first.subscription.clone();
        self.broker
            .authorize(&who, &sub, "pubsub.subscriptions.consume")?;
        self.broker.get_subscription(&sub)?;
        let deadline_s = match first.stream_ack_deadline_seconds {
            0 => None,
            s @ 10..=600 => Some(i64::from(s)),
            s => {
                return Err(PubsubError::invalid(format!(
                    "Invalid stream_ack_deadline_seconds: {s}; give 10 to 600"
                ))
                .into())
            }
        };
        let max_out = if first.max_outstanding_messages > 0 {
            first.max_outstanding_messages as usize
        } else {
            1000
        };
        let stream = StreamState {
            broker: self.broker.clone(),
            sub: sub.clone(),
            outstanding: Mutex::new(HashSet::new()),
            room: Notify::new(),
        };
        let stream = Arc::new(stream);
        stream.handle(first).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<StreamingPullResponse, Status>>(4);
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
        // Reader: acks and deadline changes sent on the stream.
        tokio::spawn({
            let stream = stream.clone();
            let tx = tx.clone();
            async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if let Err(e) = stream.handle(m).await {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
                let _ = done_tx.send(true);
            }
        });
        // Sender: hands out messages while there is room under the flow-control limit.
        tokio::spawn(async move {
            loop {
                if tx.is_closed() || *done_rx.borrow() {
                    return;
                }
                let notify = match stream.broker.notify_of(&stream.sub) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let published = notify.notified();
                let freed = stream.room.notified();
                tokio::pin!(published, freed);
                published.as_mut().enable();
                freed.as_mut().enable();
                let room = max_out.saturating_sub(stream.outstanding_now());
                let mut wait = Duration::from_secs(1);
                if room > 0 {
                    match stream.broker.deliver(&stream.sub, room, deadline_s) {
                        Ok((got, _, next_at)) => {
                            if let Some(at) = next_at {
                                wait =
                                    wait.min(Duration::from_millis((at - now_ms()).max(1) as u64));
                            }
                            if !got.is_empty() {
                                {
                                    let mut out = stream.outstanding.lock().unwrap();
                                    for m in &got {
                                        out.insert(m.ack_id.clone());
                                    }
                                }
                                let resp = StreamingPullResponse {
                                    received_messages: got,
                                    ..Default::default()
                                };
                                if tx.send(Ok(resp)).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    _ = &mut published => {}
                    _ = &mut freed => {}
                    _ = done_rx.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out)))
    }

    async fn modify_push_config(&self, req: Request<ModifyPushConfigRequest>) -> R<()> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.update",
        )?;
        let r = req.into_inner();
        self.broker
            .modify_push_config(&r.subscription, r.push_config)
            .await?;
        Ok(Response::new(()))
    }
    async fn get_snapshot(&self, req: Request<GetSnapshotRequest>) -> R<Snapshot> {
        self.allow(&req, Some(&req.get_ref().snapshot), "pubsub.snapshots.get")?;
        Ok(Response::new(
            self.broker.get_snapshot(&req.into_inner().snapshot)?,
        ))
    }
    async fn list_snapshots(&self, req: Request<ListSnapshotsRequest>) -> R<ListSnapshotsResponse> {
        self.allow(&req, None, "pubsub.snapshots.list")?;
        let r = req.into_inner();
        let all = self.broker.list_snapshots(&project(&r.project)?);
        let (snapshots, next_page_token) = page(all, |s| &s.name, r.page_size, &r.page_token);
        Ok(Response::new(ListSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }
    async fn create_snapshot(&self, req: Request<CreateSnapshotRequest>) -> R<Snapshot> {
        self.allow(&req, None, "pubsub.snapshots.create")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.broker
                .create_snapshot(&r.name, &r.subscription, r.labels)
                .await?,
        ))
    }
    async fn update_snapshot(&self, _req: Request<UpdateSnapshotRequest>) -> R<Snapshot> {
        Err(Status::unimplemented(
            "UpdateSnapshot is not supported by this server: delete the snapshot and create it again",
        ))
    }
    async fn delete_snapshot(&self, req: Request<DeleteSnapshotRequest>) -> R<()> {
        self.allow(
            &req,
            Some(&req.get_ref().snapshot),
            "pubsub.snapshots.delete",
        )?;
        self.broker
            .delete_snapshot(&req.into_inner().snapshot)
            .await?;
        Ok(Response::new(()))
    }
    async fn seek(&self, req: Request<SeekRequest>) -> R<SeekResponse> {
        self.allow(
            &req,
            Some(&req.get_ref().subscription),
            "pubsub.subscriptions.consume",
        )?;
        let r = req.into_inner();
        self.broker.seek(&r.subscription, r.target).await?;
        Ok(Response::new(SeekResponse {}))
    }
}

/// One StreamingPull stream: the ack ids it has out, for flow control.
struct StreamState {
    broker: Arc<Broker>,
    sub: String,
    outstanding: Mutex<HashSet<String>>,
    room: Notify,
}

impl StreamState {
    /// Messages still out with this stream's client: not acknowledged (on the stream or by an
    /// `Acknowledge` call, as most clients do), not nacked, lease not run out.
    fn outstanding_now(&self) -> usize {
        let mut out = self.outstanding.lock().unwrap();
        let live: HashSet<String> = self
            .broker
            .still_out(&self.sub, out.iter())
            .into_iter()
            .collect();
        out.retain(|a| live.contains(a));
        out.len()
    }

    /// Applies a request's acks and deadline changes.
    async fn handle(&self, m: StreamingPullRequest) -> Result<(), Status> {
        if m.modify_deadline_ack_ids.len() != m.modify_deadline_seconds.len() {
            return Err(PubsubError::invalid(
                "modify_deadline_seconds and modify_deadline_ack_ids must have the same length",
            )
            .into());
        }
        if !m.ack_ids.is_empty() {
            self.broker.acknowledge(&self.sub, &m.ack_ids).await?;
            let mut out = self.outstanding.lock().unwrap();
            for a in &m.ack_ids {
                out.remove(a);
            }
        }
        for (a, secs) in m
            .modify_deadline_ack_ids
            .iter()
            .zip(&m.modify_deadline_seconds)
        {
            self.broker
                .modify_ack_deadline(&self.sub, std::slice::from_ref(a), *secs)?;
            if *secs == 0 {
                self.outstanding.lock().unwrap().remove(a);
            }
        }
        if !m.ack_ids.is_empty() || !m.modify_deadline_ack_ids.is_empty() {
            self.room.notify_waiters();
        }
        Ok(())
    }
}
