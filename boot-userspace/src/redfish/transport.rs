//! One HTTP/1.1 exchange with a BMC over TCP or TLS, bounded by a timeout.
//!
//! A connection per request: a BMC sees a handful of requests per reboot, many BMCs close idle
//! connections early, and a fresh connection never inherits a half-dead one's state.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{
    body::Bytes,
    header::{HeaderMap, HeaderName, HeaderValue},
    Method, Request, StatusCode, Uri,
};
use hyper_util::rt::TokioIo;
use rustls::{pki_types::ServerName, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::RedfishError;

/// Where a BMC is and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// `https` (or `http` for lab emulators).
    tls: Option<Arc<ClientConfig>>,
    host: String,
    port: u16,
    /// Bound on one whole exchange (connect, TLS, request, response).
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls.is_some() { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// A response: status, headers and the whole body (BMC answers are small).
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Why a BMC URL is refused. Each carries the URL as given, which every text quotes.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("{url:?} is not a URL: {error}")]
    NotAUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        error: hyper::http::uri::InvalidUri,
    },
    /// A scheme other than `https` or `http`, or none.
    #[error("{url:?}: the scheme must be https (or http)")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// No host part.
    #[error("{url:?} has no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// A path after the address: Redfish paths are absolute, from `/redfish/v1`.
    #[error("{url:?}: give the BMC's address without a path")]
    Path {
        /// The URL as given.
        url: String,
    },
    /// `https` without a TLS configuration to check the BMC with.
    #[error("{url:?}: https needs a TLS policy")]
    NoTlsPolicy {
        /// The URL as given.
        url: String,
    },
}

/// Splits a BMC URL into (https?, host, port). A path is refused: Redfish paths are
/// absolute, from `/redfish/v1`.
pub fn parse_url(url: &str) -> Result<(bool, String, u16), UrlError> {
    let uri: Uri = url.parse().map_err(|error| UrlError::NotAUrl {
        url: url.to_owned(),
        error,
    })?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(UrlError::Scheme {
                url: url.to_owned(),
            })
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| UrlError::NoHost {
            url: url.to_owned(),
        })?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(UrlError::Path {
            url: url.to_owned(),
        });
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((https, host, port))
}

/// Largest body read from a BMC; Redfish resources are a few KiB.
const MAX_BODY: usize = 4 << 20;

impl Endpoint {
    /// Parses `http://host[:port]` or `https://host[:port]` (see [`parse_url`]); https needs
    /// a TLS configuration.
    pub fn new(
        url: &str,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Result<Self, UrlError> {
        let (https, host, port) = parse_url(url)?;
        let tls = if https {
            Some(tls.ok_or_else(|| UrlError::NoTlsPolicy {
                url: url.to_owned(),
            })?)
        } else {
            None
        };
        Ok(Self {
            tls,
            host,
            port,
            timeout,
        })
    }

    /// Sends one request and reads the whole response, all within `self.timeout`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Response, RedfishError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(RedfishError::Timeout(self.timeout)),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Response, RedfishError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| RedfishError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder().method(method).uri(path);
        let authority = if self.port == 443 || self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        req = req
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::CONNECTION, "close");
        // JSON unless the caller names its own type (a merge patch): one Content-Type only.
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k == hyper::header::CONTENT_TYPE)
        {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| RedfishError::Protocol(e.to_string()))?;
        match &self.tls {
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| RedfishError::Tls(format!("{}: {e}", self.host)))?;
                let stream = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| RedfishError::Tls(e.to_string()))?;
                roundtrip(TokioIo::new(stream), req).await
            }
            None => roundtrip(TokioIo::new(tcp), req).await,
        }
    }
}

async fn roundtrip<T>(io: T, req: Request<Full<Bytes>>) -> Result<Response, RedfishError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| RedfishError::Connect(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| RedfishError::Connect(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_BODY);
        let body = limited
            .collect()
            .await
            .map_err(|e| RedfishError::Protocol(format!("reading the response: {e}")))?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_scheme_host_and_port() {
        let t = Duration::from_secs(1);
        let e = Endpoint::new("http://127.0.0.1:8000", None, t).expect("http");
        assert_eq!(format!("{e:?}"), "http://127.0.0.1:8000");
        let e = Endpoint::new("http://bmc1", None, t).expect("default port");
        assert_eq!(format!("{e:?}"), "http://bmc1:80");
        // Each refused for its own reason, not merely refused.
        let refused = |url: &str| match Endpoint::new(url, None, t) {
            Ok(e) => panic!("{url} accepted as {e:?}"),
            Err(why) => why,
        };
        let why = refused("https://bmc1");
        assert!(matches!(why, UrlError::NoTlsPolicy { .. }), "{why}");
        assert_eq!(
            why.to_string(),
            r#""https://bmc1": https needs a TLS policy"#
        );
        let why = refused("ftp://bmc1");
        assert!(matches!(why, UrlError::Scheme { .. }), "{why}");
        assert_eq!(
            why.to_string(),
            r#""ftp://bmc1": the scheme must be https (or http)"#
        );
        let why = refused("http://bmc1/redfish/v1");
        assert!(matches!(why, UrlError::Path { .. }), "{why}");
        assert_eq!(
            why.to_string(),
            r#""http://bmc1/redfish/v1": give the BMC's address without a path"#
        );
        let why = refused("http://bmc 1");
        assert!(matches!(why, UrlError::NotAUrl { .. }), "{why}");
        assert!(
            why.to_string()
                .starts_with(r#""http://bmc 1" is not a URL: "#),
            "{why}"
        );
        let e = Endpoint::new("http://[fd00::5]:8443", None, t).expect("v6");
        assert_eq!(format!("{e:?}"), "http://fd00::5:8443");
    }
}
