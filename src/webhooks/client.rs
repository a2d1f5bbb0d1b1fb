//! The one HTTP client every delivery goes through.
//!
//! hyper-util's pooled client over rustls (for `https`; Mozilla's roots compiled in):
//! keep-alive connections reused across deliveries (a bounded
//! number idle per host), no redirects followed (hyper never follows them), no proxy (nothing
//! reads the proxy environment), a connect timeout and an overall timeout per attempt, and at
//! most [`MAX_RESPONSE_BYTES`] of each answer read. The SSRF [`Guard`] runs inside the
//! connector: on IP-literal hosts before connecting, and on every address the resolver returns,
//! after DNS, so a name that resolves to an internal address at delivery time (DNS rebinding)
//! is refused even if it resolved elsewhere at registration.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::guard::{Guard, Refused};

/// Most bytes of an answer read (and kept in the delivery log).
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Idle keep-alive connections kept per host.
const MAX_IDLE_PER_HOST: usize = 32;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Resolves with the system resolver, then drops every address the guard refuses.
#[derive(Clone)]
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = addresses
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(why)) => Err(Box::new(why) as BoxError),
                (true, None) => Err(format!("{} resolved to no address", name.as_str()).into()),
                (false, _) => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The HTTP connector, with IP-literal hosts checked before connecting (hyper's connector does
/// not ask the resolver about them).
#[derive(Clone)]
struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Arc<Guard>,
}

impl tower::Service<Uri> for GuardedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if let Some(ip) = literal
            && let Err(why) = self.guard.check(ip)
        {
            return Box::pin(async move { Err(Box::new(why) as BoxError) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// An answer: its status, `Retry-After` in seconds, and the start of its body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

/// Why an attempt got no answer.
#[derive(Clone, Debug)]
pub enum SendError {
    /// The guard refused the address (not the endpoint's fault: the breaker ignores it).
    Refused(Refused),
    Timeout,
    /// Connection refused, reset, DNS failure, protocol error…
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(why) => write!(f, "refused: {why}"),
            SendError::Timeout => f.write_str("no answer within the delivery timeout"),
            SendError::Failed(why) => f.write_str(why),
        }
    }
}

/// The pooled client.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    pub fn new(guard: Guard, timeout: Duration) -> Client {
        let guard = Arc::new(guard);
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            guard: guard.clone(),
        });
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        http.set_nodelay(true);
        // https URLs go through the TLS layer below, which hands plain TCP to this one.
        http.enforce_http(false);
        let tls = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(GuardedConnector { inner: http, guard });
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(tls);
        Client { inner, timeout }
    }

    /// POSTs `body` to `url` with `headers`, within the timeout.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, SendError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| SendError::Failed(format!("the stored URL {url:?} does not parse")))?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("sessiond/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| SendError::Failed(format!("header {name} is not valid")))?;
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| SendError::Failed(format!("building the request: {e}")))?;
        let attempt = async {
            let response = self.inner.request(request).await.map_err(classify)?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let mut body = response.into_body();
            let mut kept = Vec::new();
            // Read to the end when the answer is short, so the connection goes back to the
            // pool; stop at the cap otherwise (the connection is then dropped).
            while kept.len() < MAX_RESPONSE_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            let room = MAX_RESPONSE_BYTES - kept.len();
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Some(Err(_)) | None => break,
                }
            }
            Ok(Answer {
                status,
                retry_after,
                body: String::from_utf8_lossy(&kept).into_owned(),
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        }
    }
}

/// A refusal by the guard anywhere in the error's chain, or a plain failure.
fn classify(error: hyper_util::client::legacy::Error) -> SendError {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(&error);
    let mut messages = Vec::new();
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return SendError::Refused(refused.clone());
        }
        messages.push(e.to_string());
        cause = e.source();
    }
    messages.dedup();
    SendError::Failed(messages.join(": "))
}
