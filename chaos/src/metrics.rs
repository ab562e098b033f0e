//! Reading a node's Prometheus text page: one series' value, for kvserver's
//! tests and the end-to-end suite.

/// The value of the series `series` (name with its labels, exactly as rendered,
/// e.g. `kv_peer_refused_total{reason="tls"}`) in `text`; 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_series_is_read_by_its_exact_name_and_labels() {
        let text = "# HELP x\nkv_a{port=\"peer\"} 3\nkv_a{port=\"peer\",x=\"1\"} 9\nkv_ab 5\n";
        assert_eq!(super::value(text, "kv_a{port=\"peer\"}"), 3.0);
        assert_eq!(super::value(text, "kv_a"), 0.0);
        assert_eq!(super::value(text, "kv_ab"), 5.0);
    }
}
