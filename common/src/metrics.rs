//! `--metrics ADDR`: the live counters in Prometheus/OpenMetrics text at `GET /metrics`.
//!
//! Each daemon describes its counters as a list of [`Metric`]s, read on every scrape from
//! its one counters struct (so `/metrics` and the JSON summary never disagree);
//! `prometheus-client` encodes them. The HTTP side is the least a scraper needs: one request
//! per connection, a bounded request head read under a timeout, `GET /metrics` or 404.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One metric: a name (counters get `_total` appended on the wire), its help text, and its
/// values.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub values: Values,
}

/// A counter (one value, or one per value of a label) or a gauge.
#[derive(Debug, Clone)]
pub enum Values {
    Count(u64),
    CountBy(&'static str, Vec<(Cow<'static, str>, u64)>),
    Gauge(f64),
    GaugeBy(&'static str, Vec<(Cow<'static, str>, f64)>),
}

impl Metric {
    /// A counter without labels.
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
        Metric {
            name,
            help,
            values: Values::Count(value),
        }
    }

    /// A counter by one label.
    pub fn counter_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (impl Into<Cow<'static, str>>, u64)>,
    ) -> Metric {
        Metric {
            name,
            help,
            values: Values::CountBy(
                label,
                values.into_iter().map(|(l, n)| (l.into(), n)).collect(),
            ),
        }
    }

    /// A gauge without labels.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric {
            name,
            help,
            values: Values::Gauge(value),
        }
    }

    /// A gauge by one label.
    pub fn gauge_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (impl Into<Cow<'static, str>>, f64)>,
    ) -> Metric {
        Metric {
            name,
            help,
            values: Values::GaugeBy(
                label,
                values.into_iter().map(|(l, v)| (l.into(), v)).collect(),
            ),
        }
    }
}

/// What a daemon hands the endpoint: its metrics, read now.
pub type Source = Arc<dyn Fn() -> Vec<Metric> + Send + Sync>;

/// Adapts a [`Source`] to `prometheus-client`'s scrape-time collector.
struct Collector(Source);

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Collector")
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in (self.0)() {
            let metric_type = match metric.values {
                Values::Count(_) | Values::CountBy(..) => ConstCounter::new(0u64).metric_type(),
                Values::Gauge(_) | Values::GaugeBy(..) => ConstGauge::new(0.0f64).metric_type(),
            };
            let mut family =
                encoder.encode_descriptor(metric.name, metric.help, None, metric_type)?;
            match &metric.values {
                Values::Count(n) => ConstCounter::new(*n).encode(family)?,
                Values::Gauge(v) => ConstGauge::new(*v).encode(family)?,
                Values::CountBy(label, values) => {
                    for (label_value, n) in values {
                        let labels = [(*label, label_value.as_ref())];
                        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
                    }
                }
                Values::GaugeBy(label, values) => {
                    for (label_value, v) in values {
                        let labels = [(*label, label_value.as_ref())];
                        ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The text a scrape gets.
pub fn render(source: &Source) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector(source.clone())));
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would leave a truncated page.
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The running endpoint; it stops when dropped.
#[derive(Debug)]
pub struct Endpoint(tokio::task::JoinHandle<()>);

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `source` on `listener` from a task of the current runtime until the returned
/// [`Endpoint`] is dropped.
pub fn spawn(listener: TcpListener, source: Source) -> Endpoint {
    Endpoint(tokio::spawn(serve(listener, source)))
}

/// Answers scrapes on `listener` until the task is dropped. A connection that errs is closed;
/// the endpoint itself never stops.
pub async fn serve(listener: TcpListener, source: Source) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Beyond the limit a connection is closed at once: whoever can reach the port cannot
        // make the daemon hold more than a few fds, buffers and tasks for it.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &source)).await;
            drop(slot);
        });
    }
}

/// Scrapes answered at once; a scraper needs one.
const MAX_CONNECTIONS: usize = 4;

/// Longest request head read: a scraper's GET fits easily.
const MAX_REQUEST_HEAD: usize = 8 << 10;

async fn answer(mut stream: TcpStream, source: &Source) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = request_line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let response = if method == Some(b"GET") && path == Some(b"/metrics") {
        let body = render(source);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; \
             charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = "only GET /metrics is served here\n";
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Arc::new(|| {
            vec![
                Metric::counter_by(
                    "sluice_objects",
                    "Objects by outcome.",
                    "outcome",
                    [("delivered", 3), ("failed", 1)],
                ),
                Metric::gauge("sluice_link_up", "1 while valid frames arrive.", 1.0),
            ]
        })
    }

    #[test]
    fn counters_get_total_and_labels() {
        let text = render(&source());
        assert!(
            text.contains("sluice_objects_total{outcome=\"delivered\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_objects_total{outcome=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE sluice_link_up gauge"), "{text}");
        assert!(text.contains("sluice_link_up 1.0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = spawn(listener, source());
        let page = get(addr, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("sluice_objects_total{outcome=\"delivered\"} 3"));
        let other = get(addr, "/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        drop(endpoint);
    }

    #[tokio::test]
    async fn idle_connections_hold_at_most_a_few_slots() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _endpoint = spawn(listener, source());
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server accept them all before the next one arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), refused.read_to_end(&mut out))
            .await
            .expect("closed at once, not held")
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&out));
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
    }
}
