//! The Discovery gRPC service by hand instead of the generated `DiscoveryServer`, for one
//! reason: its responses are sent pre-encoded. A snapshot is encoded once per change and every
//! stream copies those bytes and appends its own nonce field, instead of re-encoding the whole
//! mesh once per proxy. Requests are decoded with prost as usual.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BufMut;
use futures::stream::BoxStream;
use serin_proto::v1;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::Discovery;
use crate::snapshot::EncodedSnapshot;

/// One push to one stream: the shared snapshot and this stream's nonce.
#[derive(Debug, Clone)]
pub struct Push {
    /// The snapshot (its body holds version and payload).
    pub snapshot: Arc<EncodedSnapshot>,
    /// Nonce of this push on its stream.
    pub nonce: u64,
}

/// Writes a [`Push`] as a `SubscribeResponse`.
#[derive(Debug, Default)]
pub struct PushEncoder;

impl Encoder for PushEncoder {
    type Item = Push;
    type Error = Status;

    fn encode(&mut self, item: Push, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.snapshot.body);
        // SubscribeResponse.nonce is field 2; the snapshot's body was encoded without one.
        prost::encoding::string::encode(2, &item.nonce.to_string(), dst);
        Ok(())
    }
}

/// Pre-encoded responses, prost-decoded requests.
#[derive(Debug, Default, Clone, Copy)]
pub struct SubscribeCodec;

impl Codec for SubscribeCodec {
    type Encode = Push;
    type Decode = v1::SubscribeRequest;
    type Encoder = PushEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> PushEncoder {
        PushEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder::default()
    }
}

/// Decodes `SubscribeRequest`s.
#[derive(Debug, Default)]
pub struct RequestDecoder(tonic_prost::ProstDecoder<v1::SubscribeRequest>);

impl Decoder for RequestDecoder {
    type Item = v1::SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<v1::SubscribeRequest>, Status> {
        self.0.decode(src)
    }
}

/// The `serin.v1.Discovery` service for tonic's router.
#[derive(Debug, Clone)]
pub struct DiscoveryServer {
    inner: Arc<Discovery>,
}

impl DiscoveryServer {
    /// Serves `discovery`.
    pub fn new(discovery: Discovery) -> Self {
        Self {
            inner: Arc::new(discovery),
        }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = "serin.v1.Discovery";
}

struct SubscribeSvc(Arc<Discovery>);

impl StreamingService<v1::SubscribeRequest> for SubscribeSvc {
    type Response = Push;
    type ResponseStream = BoxStream<'static, Result<Push, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<v1::SubscribeRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.subscribe(request).await })
    }
}

impl<B> Service<http::Request<B>> for DiscoveryServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == "/serin.v1.Discovery/Subscribe" {
            let inner = self.inner.clone();
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(SubscribeCodec);
                Ok(grpc.streaming(SubscribeSvc(inner), req).await)
            })
        } else {
            Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                response.headers_mut().insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            })
        }
    }
}
