//! The generated Discovery client and server talk over a real socket on 127.0.0.1:0: the server
//! streams one snapshot after the hello, the client ACKs it with the echoed version and nonce.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serin_proto::v1::{
    Hello, ProxyIdentity, ServiceEndpoints, Snapshot, SnapshotAck, SubscribeRequest,
    SubscribeResponse,
    discovery_client::DiscoveryClient,
    discovery_server::{Discovery, DiscoveryServer},
    subscribe_request, subscribe_response,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_stream::{StreamExt, wrappers::ReceiverStream, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Upper bound for every wait in this test; the exchange itself takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the server saw on the one stream it served.
#[derive(Debug)]
struct Observed {
    hello: Hello,
    ack: SnapshotAck,
}

/// A Discovery server that sends one fixed snapshot and reports the hello and the answer.
struct OneSnapshot {
    observed: Arc<Mutex<Option<oneshot::Sender<Observed>>>>,
}

fn snapshot() -> SubscribeResponse {
    SubscribeResponse {
        version: "1".to_owned(),
        nonce: "nonce-1".to_owned(),
        payload: Some(subscribe_response::Payload::Snapshot(Snapshot {
            services: Vec::new(),
            endpoints: vec![ServiceEndpoints {
                service: "reviews".to_owned(),
                namespace: "default".to_owned(),
                endpoints: Vec::new(),
            }],
            policies: Vec::new(),
            ..Default::default()
        })),
    }
}

#[tonic::async_trait]
impl Discovery for OneSnapshot {
    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let observed = self.observed.lock().await.take();
        tokio::spawn(async move {
            let hello = match inbound.message().await {
                Ok(Some(SubscribeRequest {
                    kind: Some(subscribe_request::Kind::Hello(hello)),
                })) => hello,
                other => {
                    let error = Status::invalid_argument(format!("expected hello, got {other:?}"));
                    let _ = tx.send(Err(error)).await;
                    return;
                }
            };
            if tx.send(Ok(snapshot())).await.is_err() {
                return;
            }
            if let Ok(Some(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Ack(ack)),
            })) = inbound.message().await
                && let Some(observed) = observed
            {
                let _ = observed.send(Observed { hello, ack });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn snapshot_is_streamed_and_acked_over_a_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (observed_tx, observed_rx) = oneshot::channel();
    let server = OneSnapshot {
        observed: Arc::new(Mutex::new(Some(observed_tx))),
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(server))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let mut client =
        tokio::time::timeout(DEADLINE, DiscoveryClient::connect(format!("http://{addr}")))
            .await
            .expect("connect within the deadline")
            .expect("connect");
    let (requests, requests_rx) = mpsc::channel(4);
    requests
        .send(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Hello(Hello {
                proxy: Some(ProxyIdentity {
                    pod_name: "productpage-v1-abc".to_owned(),
                    namespace: "default".to_owned(),
                    pod_ips: vec!["10.244.0.5".to_owned()],
                    service: "productpage".to_owned(),
                    version: "v1".to_owned(),
                    proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
                    instance_id: "0123abcd".to_owned(),
                    ..ProxyIdentity::default()
                }),
                capabilities: vec!["snapshot.full".to_owned()],
                applied_version: String::new(),
            })),
        })
        .await
        .unwrap();
    let mut responses =
        tokio::time::timeout(DEADLINE, client.subscribe(ReceiverStream::new(requests_rx)))
            .await
            .expect("subscribe within the deadline")
            .expect("subscribe")
            .into_inner();

    let pushed = tokio::time::timeout(DEADLINE, responses.next())
        .await
        .expect("snapshot within the deadline")
        .expect("stream open")
        .expect("snapshot, not an error");
    assert_eq!(pushed, snapshot());

    requests
        .send(SubscribeRequest {
            kind: Some(subscribe_request::Kind::Ack(SnapshotAck {
                version: pushed.version.clone(),
                nonce: pushed.nonce.clone(),
            })),
        })
        .await
        .unwrap();
    let observed = tokio::time::timeout(DEADLINE, observed_rx)
        .await
        .expect("ack within the deadline")
        .expect("server observed the exchange");
    assert_eq!(observed.ack.version, "1");
    assert_eq!(observed.ack.nonce, "nonce-1");
    let proxy = observed.hello.proxy.expect("identity");
    assert_eq!(proxy.pod_name, "productpage-v1-abc");
    assert_eq!(proxy.pod_ips, ["10.244.0.5"]);
    assert_eq!(observed.hello.capabilities, ["snapshot.full"]);

    // The server ends the stream after its one exchange; then shut it down cleanly.
    let end = tokio::time::timeout(DEADLINE, responses.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "no second message: {end:?}");
    drop(requests);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("server stops within the deadline")
        .expect("server task")
        .expect("server ran without error");
}

#[tokio::test]
async fn a_stream_not_opened_by_hello_is_rejected() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (observed_tx, _observed_rx) = oneshot::channel();
    let server = OneSnapshot {
        observed: Arc::new(Mutex::new(Some(observed_tx))),
    };
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let ack_first = tokio_stream::once(SubscribeRequest {
        kind: Some(subscribe_request::Kind::Ack(SnapshotAck::default())),
    });
    let mut responses = tokio::time::timeout(DEADLINE, client.subscribe(ack_first))
        .await
        .expect("subscribe within the deadline")
        .expect("subscribe")
        .into_inner();
    let status = tokio::time::timeout(DEADLINE, responses.next())
        .await
        .expect("answer within the deadline")
        .expect("an answer")
        .expect_err("an error status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    serving.abort();
}
