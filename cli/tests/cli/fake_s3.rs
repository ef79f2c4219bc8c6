//! A small S3 server on 127.0.0.1 that keeps objects in memory and *ignores* conditional
//! headers (`If-None-Match`, `If-Match`), as some S3-compatible servers do. Enough of the API
//! for `s3dock doctor`: ListObjectsV2, Put/Get/Head/DeleteObject, GetBucketVersioning, and
//! STS GetCallerIdentity on the same port (as LocalStack serves it).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

type Objects = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

pub struct CarelessS3 {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub objects: Objects,
    thread: Option<JoinHandle<()>>,
}

impl CarelessS3 {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let objects: Objects = Arc::default();
        let (stop2, objects2) = (stop.clone(), objects.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let _ = serve(stream, &objects2);
                }
            }
        });
        CarelessS3 { addr, stop, objects, thread: Some(thread) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CarelessS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Reads one request and answers it, then closes the connection.
fn serve(mut stream: TcpStream, objects: &Objects) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let first = head.lines().next().unwrap_or("");
    let mut parts = first.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    let segs: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let key = segs.get(1).map(|k| decode(k)).unwrap_or_default();

    let (status, headers, out): (&str, Vec<(String, String)>, Vec<u8>) = match method {
        "POST" if String::from_utf8_lossy(&body).contains("GetCallerIdentity") => (
            "200 OK",
            vec![("Content-Type".into(), "text/xml".into())],
            b"<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/careless</Arn><UserId>AIDACARELESS</UserId><Account>123456789012</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>".to_vec(),
        ),
        "GET" if key.is_empty() && params.contains_key("versioning") => (
            "200 OK",
            vec![],
            b"<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></VersioningConfiguration>".to_vec(),
        ),
        "GET" if key.is_empty() => {
            let prefix = params.get("prefix").cloned().unwrap_or_default();
            let delimiter = params.get("delimiter").cloned().unwrap_or_default();
            let objs = objects.lock().unwrap();
            let mut contents = String::new();
            let mut prefixes = std::collections::BTreeSet::new();
            for (k, v) in objs.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                let rest = &k[prefix.len()..];
                match rest.find(delimiter.as_str()).filter(|_| !delimiter.is_empty()) {
                    Some(i) => {
                        prefixes.insert(format!("{prefix}{}", &rest[..i + delimiter.len()]));
                    }
                    None => contents.push_str(&format!(
                        "<Contents><Key>{}</Key><LastModified>2025-07-22T10:00:00.000Z</LastModified><ETag>&quot;{}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                        esc(k),
                        md5_hex(v),
                        v.len()
                    )),
                }
            }
            let cps: String = prefixes.iter().map(|p| format!("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", esc(p))).collect();
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix>{}</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}{cps}</ListBucketResult>",
                esc(&prefix)
            );
            ("200 OK", vec![("Content-Type".into(), "application/xml".into())], xml.into_bytes())
        }
        // Conditional headers are ignored: that is the point of this server.
        "PUT" => {
            let etag = md5_hex(&body);
            objects.lock().unwrap().insert(key, body);
            ("200 OK", vec![("ETag".into(), format!("\"{etag}\""))], vec![])
        }
        "GET" | "HEAD" => match objects.lock().unwrap().get(&key) {
            Some(v) => (
                "200 OK",
                vec![
                    ("ETag".into(), format!("\"{}\"", md5_hex(v))),
                    ("Last-Modified".into(), "Tue, 22 Jul 2025 10:00:00 GMT".into()),
                    ("Content-Type".into(), "application/octet-stream".into()),
                ],
                v.clone(),
            ),
            None => (
                "404 Not Found",
                vec![],
                b"<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>".to_vec(),
            ),
        },
        "DELETE" => {
            objects.lock().unwrap().remove(&key);
            ("204 No Content", vec![], vec![])
        }
        _ => ("400 Bad Request", vec![], b"<Error><Code>NotImplemented</Code></Error>".to_vec()),
    };
    let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", out.len());
    for (k, v) in headers {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str("\r\n");
    stream.write_all(response.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(&out)?;
    }
    stream.flush()
}
