//! One keep-alive HTTP/1.1 connection (hyper), owned by one virtual-buyer worker.
//!
//! The number of sockets is the number of workers, whatever the number of buyers: a
//! million buyers go through `--concurrency` connections, never one each.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Where a target listens.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// The `Host` header.
    pub(crate) host: String,
}

impl Endpoint {
    /// `http://127.0.0.1:4000` (a path is ignored).
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported, got {url:?}"))?;
        let host = rest.split('/').next().unwrap_or_default().to_string();
        let with_port = if host.contains(':') {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to nothing"))?;
        Ok(Self { addr, host })
    }

    pub(crate) fn from_addr(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
        }
    }
}

/// A lazily (re)connected HTTP/1.1 connection.
pub(crate) struct Conn {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

/// A response: status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// The fields of an answer the bench looks at.
#[derive(Debug, Deserialize)]
pub(crate) struct Fields<'a> {
    #[serde(borrow, default)]
    pub(crate) reservation_id: Option<&'a str>,
    #[serde(borrow, default)]
    pub(crate) error: Option<&'a str>,
}

impl Answer {
    pub(crate) fn fields(&self) -> Option<Fields<'_>> {
        serde_json::from_slice(&self.body).ok()
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "unexpected answer {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Conn {
    pub(crate) fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        Self {
            endpoint,
            sender: None,
            timeout,
        }
    }

    /// Opens the connection now (so that connecting is not part of the first request).
    pub(crate) async fn connect(&mut self) -> anyhow::Result<()> {
        if self.sender.is_none() {
            let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.endpoint.addr))
                .await
                .map_err(|_| anyhow!("connect to {} timed out", self.endpoint.addr))?
                .with_context(|| format!("cannot connect to {}", self.endpoint.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        Ok(())
    }

    /// Sends one request; a transport error or a timeout drops the connection, the next
    /// request opens a new one.
    pub(crate) async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        self.request_with(method, path, body, &[]).await
    }

    /// [`Conn::request`] with extra headers (a queue ticket, an admission token).
    pub(crate) async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<Answer> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.request_inner(method, path, body, headers)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("timed out after {timeout:?}"))
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<Answer> {
        self.connect().await?;
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.endpoint.host.as_str());
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for &(name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }

    pub(crate) async fn post_json(
        &mut self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Answer> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body)?))
            .await
    }

    pub(crate) async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.request(Method::GET, path, None).await
    }
}
