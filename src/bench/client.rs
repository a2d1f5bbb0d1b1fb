//! A minimal keep-alive HTTP/1.1 client on hyper's connection API: one TCP connection, one
//! request at a time, nothing per request beyond building the request and reading the body.
//! The load generator must not be the bottleneck, so there is no pool, no redirect handling and
//! no header map cloning.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where requests go: the only host the load generator ever talks to.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    pub authority: String,
    /// Path prefix from the URL (empty, or e.g. `/api`), without a trailing slash.
    pub base_path: String,
    /// `Bearer <key>` for a server that requires an API key.
    pub authorization: Option<hyper::header::HeaderValue>,
}

impl Target {
    /// Parses `http://host:port[/prefix]`, resolving the host once.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--target {url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            anyhow::bail!("--target must be an http:// URL (TLS is not supported), got {url:?}");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--target {url:?} has no host"))?
            .to_string();
        let host_port = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
            .map_err(|e| anyhow::anyhow!("cannot resolve {host_port}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host_port} resolves to no address"))?;
        Ok(Target {
            addr,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: &str) -> anyhow::Result<Target> {
        // Visible ASCII only (as every sessiond key is): `from_str` would also take bytes that
        // `to_str` refuses, and the fan-out writes this header as text.
        let mut value = hyper::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .ok()
            .filter(|value| value.to_str().is_ok())
            .ok_or_else(|| {
                anyhow::anyhow!("--api-key contains characters a header cannot carry")
            })?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }
}

/// Why a request produced no HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    Connect,
    Timeout,
    Io,
    /// Due (open model) but never sent before the run ended: the server fell behind.
    Unsent,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
            Failure::Unsent => "unsent",
        }
    }
}

/// One keep-alive connection, reconnected on demand.
pub struct Connection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

/// A completed exchange.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Connection {
    pub fn new(target: Target, timeout: Duration) -> Connection {
        Connection {
            target,
            sender: None,
            timeout,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.target.addr))
                .await
                .map_err(|_| Failure::Timeout)?
                .map_err(|_| Failure::Connect)?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|_| Failure::Connect)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or(Failure::Connect)
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<Reply, Failure> {
        let timeout = self.timeout;
        let uri = format!("{}{path_and_query}", self.target.base_path);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, self.target.authority.as_str());
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.target.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, authorization.clone());
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| Failure::Io)?;
        let sender = self.connect().await?;
        let exchange = async {
            sender.ready().await.map_err(|_| Failure::Io)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|_| Failure::Io)?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Io)?
                .to_bytes();
            Ok(Reply { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(failure)) => {
                self.sender = None;
                Err(failure)
            }
            Err(_) => {
                // The connection may still deliver the late response: never reuse it.
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }
}
