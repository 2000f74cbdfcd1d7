//! Prometheus metrics: requests and errors by route and status, latency histograms, texts and
//! padded tokens per forward pass, queue depth per model.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
    batch_texts: HistogramVec,
    batch_tokens: HistogramVec,
    queue_depth: IntGaugeVec,
    texts: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("zhiku_requests_total", "HTTP requests by route and status"), &["route", "status"]).unwrap();
        let errors = IntCounterVec::new(Opts::new("zhiku_errors_total", "HTTP requests answered with a 4xx or 5xx status"), &["route", "status"]).unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("zhiku_request_duration_seconds", "Time from request to response")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .unwrap();
        let batch_texts = HistogramVec::new(
            HistogramOpts::new("zhiku_batch_size", "Texts per forward pass").buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &["model"],
        )
        .unwrap();
        let batch_tokens = HistogramVec::new(
            HistogramOpts::new("zhiku_batch_tokens", "Padded tokens per forward pass").buckets(vec![64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0]),
            &["model"],
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(Opts::new("zhiku_queue_depth", "Requests waiting for a model's worker"), &["model"]).unwrap();
        let texts = IntCounterVec::new(Opts::new("zhiku_texts_total", "Texts processed by model and operation"), &["model", "op"]).unwrap();
        for c in [Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(errors.clone()), Box::new(latency.clone()), Box::new(batch_texts.clone()), Box::new(batch_tokens.clone()), Box::new(queue_depth.clone()), Box::new(texts.clone())] {
            registry.register(c).unwrap();
        }
        Self { registry, requests, errors, latency, batch_texts, batch_tokens, queue_depth, texts }
    }

    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let s = status.to_string();
        self.requests.with_label_values(&[route, &s]).inc();
        if status >= 400 {
            self.errors.with_label_values(&[route, &s]).inc();
        }
        self.latency.with_label_values(&[route]).observe(seconds);
    }

    pub fn observe_batch(&self, model: &str, texts: usize, padded_tokens: usize) {
        self.batch_texts.with_label_values(&[model]).observe(texts as f64);
        self.batch_tokens.with_label_values(&[model]).observe(padded_tokens as f64);
    }

    pub fn count_texts(&self, model: &str, op: &str, n: usize) {
        self.texts.with_label_values(&[model, op]).inc_by(n as u64);
    }

    pub fn set_queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth.with_label_values(&[model]).set(depth as i64);
    }

    pub fn forget_model(&self, model: &str) {
        let _ = self.queue_depth.remove_label_values(&[model]);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding metrics");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
