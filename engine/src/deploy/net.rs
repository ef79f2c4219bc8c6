//! The host's network as a deploy sees it: HTTP probes (health checks, `verify_url`) and the
//! check that a color's host port is free. A seam like the Docker engine's: [`LocalNetwork`]
//! talks to the real sockets, the in-memory host of [`crate::fake`] answers from its
//! containers, so the deployer's state machine runs without either.
//!
//! The HTTP client is a few lines over a `TcpStream`: one `GET`, `Connection: close`, the status
//! line parsed (and, for the nginx probe, a bounded body). A health check needs nothing more,
//! and it keeps the engine crate free of an HTTP client stack.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spec::show_duration;

/// The largest body [`http_get`] keeps.
const MAX_BODY: usize = 64 * 1024;

/// One `GET`: where, and with which `Host` header (by default the address itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpProbe<'a> {
    /// An IP address or a host name.
    pub host: &'a str,
    pub port: u16,
    /// Starts with `/`, query included.
    pub path: &'a str,
    /// The `Host` header to send instead of `host:port` (a virtual host behind nginx).
    pub host_header: Option<&'a str>,
}

impl<'a> HttpProbe<'a> {
    pub fn new(host: &'a str, port: u16, path: &'a str) -> Self {
        HttpProbe { host, port, path, host_header: None }
    }

    /// `http://host:port/path`, for messages.
    pub fn url(&self) -> String {
        format!("http://{}{}", authority(self.host, self.port), self.path)
    }
}

/// What a deploy needs from the host's network.
#[async_trait]
pub trait HostNetwork: Send + Sync + std::fmt::Debug {
    /// `GET` within `timeout`: the status code, or why there is none (one line).
    async fn http_status(&self, probe: &HttpProbe<'_>, timeout: Duration) -> Result<u16, String>;

    /// `None` when a container may publish `ip:port`; otherwise why not (another process
    /// listens there), said so that the deploy's message can name it.
    async fn port_in_use(&self, ip: IpAddr, port: u16) -> Option<String>;
}

/// The real sockets of this host.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalNetwork;

#[async_trait]
impl HostNetwork for LocalNetwork {
    async fn http_status(&self, probe: &HttpProbe<'_>, timeout: Duration) -> Result<u16, String> {
        http_get(probe, timeout, 0).await.map(|(code, _)| code)
    }

    async fn port_in_use(&self, ip: IpAddr, port: u16) -> Option<String> {
        match std::net::TcpListener::bind((ip, port)) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some("is already in use by another process".into()),
            // Not ours to judge (e.g. an address this host does not have): Docker says.
            Err(_) => None,
        }
    }
}

/// `host:port`, with IPv6 addresses in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// `ip:port` for messages, IPv6 in brackets.
pub fn show_addr(ip: IpAddr, port: u16) -> String {
    authority(&ip.to_string(), port)
}

/// `GET http://host:port{path}` with `Connection: close`; the status code, or why there is
/// none, within `timeout`. Kept for callers that probe one address without a virtual host.
pub async fn http_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    LocalNetwork.http_status(&HttpProbe::new(host, port, path), timeout).await
}

/// `GET` with `Connection: close` within `timeout`: the status code and up to `keep_body`
/// bytes of the body (at most 64 KiB).
pub async fn http_get(probe: &HttpProbe<'_>, timeout: Duration, keep_body: usize) -> Result<(u16, String), String> {
    let keep_body = keep_body.min(MAX_BODY);
    let attempt = async {
        let mut socket = tokio::net::TcpStream::connect((probe.host, probe.port))
            .await
            .map_err(|e| format!("could not connect ({e})"))?;
        let host_header = probe.host_header.map_or_else(|| authority(probe.host, probe.port), str::to_owned);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: s3dock\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            probe.path
        );
        socket.write_all(request.as_bytes()).await.map_err(|e| format!("could not send the request ({e})"))?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = socket.read(&mut buf).await.map_err(|e| format!("the connection failed ({e})"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status = parse_status_line(&head)?;
        let mut body: Vec<u8> = match head.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => head[end + 4..].to_vec(),
            None => Vec::new(),
        };
        // Read (a bounded amount of) the rest, so the server sees an orderly close rather than
        // a reset for unread data.
        let mut rest = 0usize;
        while rest < MAX_BODY {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rest += n;
                    if body.len() < keep_body {
                        body.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
        body.truncate(keep_body);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("did not answer within {}", show_duration(timeout))),
    }
}

fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    if head.is_empty() {
        return Err("closed the connection without answering".to_owned());
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => Err(format!("answered something that is not HTTP ({:?})", line.chars().take(60).collect::<String>())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Oops\r\nX: y\r\n"), Ok(500));
        assert!(parse_status_line(b"").unwrap_err().contains("without answering"));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("not HTTP"));
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    /// A server answering each connection with `reply` (recording the request), or holding it
    /// open silently.
    async fn server(reply: Option<&'static str>) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(10)).await,
                }
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn the_client_reads_status_codes_bodies_and_times_out() {
        let (ok, _) = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        assert_eq!(http_status("127.0.0.1", ok, "/", Duration::from_secs(2)).await, Ok(200));
        let (bad, _) = server(Some("HTTP/1.0 503 Busy\r\n\r\n")).await;
        assert_eq!(http_status("127.0.0.1", bad, "/x", Duration::from_secs(2)).await, Ok(503));
        let (silent, _) = server(None).await;
        let started = Instant::now();
        let e = http_status("127.0.0.1", silent, "/", Duration::from_millis(200)).await.unwrap_err();
        assert!(e.contains("did not answer within 200ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let e = http_status("127.0.0.1", closed, "/", Duration::from_secs(1)).await.unwrap_err();
        assert!(e.contains("could not connect"), "{e}");

        // A virtual host and a body.
        let (body, mut requests) = server(Some("HTTP/1.1 200 OK\r\n\r\nblue 127.0.0.1:1\n")).await;
        let probe = HttpProbe { host_header: Some("probe.example"), ..HttpProbe::new("127.0.0.1", body, "/p") };
        let (code, text) = http_get(&probe, Duration::from_secs(2), 100).await.unwrap();
        assert_eq!((code, text.as_str()), (200, "blue 127.0.0.1:1\n"));
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("GET /p HTTP/1.1\r\nHost: probe.example\r\n"), "{request}");
        assert_eq!(probe.url(), format!("http://127.0.0.1:{body}/p"));
    }

    #[tokio::test]
    async fn a_port_held_by_another_process_is_reported() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let local = LocalNetwork;
        assert!(local.port_in_use("127.0.0.1".parse().unwrap(), port).await.unwrap().contains("in use"));
        drop(held);
        assert!(local.port_in_use("127.0.0.1".parse().unwrap(), port).await.is_none());
        assert_eq!(show_addr("::1".parse().unwrap(), 80), "[::1]:80");
    }
}
