//! A fake SMS gateway for benchmarks and manual testing.
//!
//! It is a plain HTTP/1.1 server (no TLS) that stands in for an `http-json`
//! upstream: every `POST` is read to the end and answered with `200` and
//! `{"id":"gw-<counter>","status":"queued"}`. Any other method gets `405`.
//! It does no other work, so that a load test measures the proxy in front of
//! it, not the gateway. `bench/run.sh` points both consentry and nginx at it.
//!
//! ```text
//! cargo run --release --example fake_gateway -- --listen 127.0.0.1:18081
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Command line of the fake gateway.
#[derive(Parser, Debug)]
#[command(about = "A fake SMS gateway that accepts every POST")]
struct Args {
    /// Address to listen on (plain HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "fake_gateway listening on http://{}",
        listener.local_addr()?
    );
    let counter = Arc::new(AtomicU64::new(0));

    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Running out of file descriptors and the like is transient.
                eprintln!("fake_gateway: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Latency numbers are meaningless with Nagle's algorithm on.
        let _ = stream.set_nodelay(true);
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, Arc::clone(&counter)));
            // A client that hangs up mid-request is not worth reporting.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Accepts a POST by reading its body and answering a fresh gateway id.
async fn answer(
    req: Request<Incoming>,
    counter: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()));
    }
    if req.into_body().collect().await.is_err() {
        return Ok(respond(StatusCode::BAD_REQUEST, Bytes::new()));
    }
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    let body = format!(r#"{{"id":"gw-{n}","status":"queued"}}"#);
    Ok(respond(StatusCode::OK, Bytes::from(body)))
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    response
}
