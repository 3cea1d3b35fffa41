//! The status endpoint every service serves: `GET /metrics` (Prometheus text format 0.0.4)
//! and `GET /status` (the same figures as JSON, which `status` subcommands print as a
//! table). Plain HTTP on a local address by default: it carries statistics, never keys.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A status snapshot a service publishes.
pub trait StatusPage: Serialize + Send + Sync + 'static {
    /// The snapshot in Prometheus text format.
    fn to_prometheus(&self) -> String;
}

/// Serves `/metrics` and `/status` from `status` until the task is dropped.
pub async fn serve_status<S: StatusPage>(listener: TcpListener, status: Arc<RwLock<S>>) {
    let s1 = status.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = s1.read().unwrap_or_else(|e| e.into_inner()).to_prometheus();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let json = serde_json::to_string(&*status.read().unwrap_or_else(|e| e.into_inner()));
                async move {
                    match json {
                        Ok(j) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "status endpoint stopped");
    }
}

/// `GET path` from a status endpoint at `addr` (HTTP/1.0, no TLS): the body on status 200,
/// an error message otherwise.
pub async fn fetch(addr: &str, path: &str) -> Result<String, String> {
    let mut s =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let code = head.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("{addr}{path}: HTTP {code}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Page {
        n: u32,
    }

    impl StatusPage for Page {
        fn to_prometheus(&self) -> String {
            format!("# TYPE x gauge\nx {}\n", self.n)
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_status_over_real_http() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let page = Arc::new(RwLock::new(Page { n: 3 }));
        let task = tokio::spawn(serve_status(l, page.clone()));
        assert_eq!(fetch(&addr, "/metrics").await.unwrap(), "# TYPE x gauge\nx 3\n");
        page.write().unwrap().n = 4;
        assert_eq!(fetch(&addr, "/status").await.unwrap(), "{\"n\":4}");
        assert!(fetch(&addr, "/nope").await.unwrap_err().contains("404"));
        task.abort();
    }
}
