//! A blocking HTTP/1.1 client for well-formed requests (hyper-util's pooled
//! client on the shared test runtime). For bytes no client would send, use
//! [`crate::RawConnection`].

use std::fmt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::runtime;

/// No request in these tests should take longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client that keeps connections alive and reuses them.
    pub fn new() -> Self {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client that opens a new connection for every request.
    pub fn one_connection_per_request() -> Self {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    pub fn get(&self, url: impl Into<String>) -> Call {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl Into<String>) -> Call {
        self.request(Method::POST, url)
    }

    pub fn put(&self, url: impl Into<String>) -> Call {
        self.request(Method::PUT, url)
    }

    pub fn delete(&self, url: impl Into<String>) -> Call {
        self.request(Method::DELETE, url)
    }

    pub fn request(&self, method: Method, url: impl Into<String>) -> Call {
        Call {
            client: self.clone(),
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }
}

/// A request being put together; [`Call::send`] sends it.
#[derive(Debug)]
pub struct Call {
    client: Client,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    /// Adds a header line (a name may be given several times).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::try_from(name).expect("a valid header name"),
            HeaderValue::try_from(value).expect("a valid header value"),
        );
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends `value` as the JSON body.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    /// Authenticates with HTTP Basic as `user` with `password`.
    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("authorization", &format!("Basic {token}"))
    }

    /// Sends the request and reads the whole response; panics on a transport
    /// error or after [`REQUEST_TIMEOUT`].
    pub fn send(self) -> Reply {
        let what = format!("{} {}", self.method, self.url);
        self.try_send()
            .unwrap_or_else(|error| panic!("{what} failed: {error}"))
    }

    /// Sends the request on a thread of its own; join the handle for the reply.
    pub fn send_in_background(self) -> JoinHandle<Reply> {
        std::thread::spawn(move || self.send())
    }

    /// Sends the request; a transport error or timeout is returned as text.
    pub fn try_send(self) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(self.method)
            .uri(&self.url)
            .body(Full::new(self.body))
            .map_err(|error| format!("bad request: {error}"))?;
        *request.headers_mut() = self.headers;
        let client = self.client.inner;
        let started = Instant::now();
        runtime().block_on(async move {
            let exchange = async {
                let response = client
                    .request(request)
                    .await
                    .map_err(|error| format!("{error:?}"))?;
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|error| format!("reading the body: {error}"))?
                    .to_bytes();
                Ok(Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                    elapsed: started.elapsed(),
                })
            };
            tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))?
        })
    }
}

/// A whole response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From sending the request to having read the whole body.
    pub elapsed: Duration,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("a visible ASCII header value"))
    }

    /// The id of the transaction that recorded this exchange (`X-OpenHIM-TransactionID`, which
    /// every proxied response carries).
    pub fn transaction_id(&self) -> String {
        self.header("x-openhim-transactionid")
            .unwrap_or_else(|| {
                panic!(
                    "the response ({}) names no transaction: {:?}",
                    self.status, self.headers
                )
            })
            .to_owned()
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("the body is UTF-8")
    }

    /// The body parsed as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "the body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body of one of Mediary's own error responses: JSON, declared as such, with a non-empty
    /// `error` message and the `blame` given.
    pub fn json_error(&self, blame: &str) -> serde_json::Value {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "content-type: {:?}",
            self.header("content-type")
        );
        let error = self.json();
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert_eq!(error["blame"], blame, "{error}");
        error
    }
}
