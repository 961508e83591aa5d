//! docs/observing.md's Analytics Engine dashboard: every ```sql block
//! parses as SQL (ClickHouse's dialect, which the SQL API speaks), reads
//! the documented dataset, weights by `_sample_interval`, and names only
//! columns the data points fill (`src/domain/metrics.rs`).

use std::path::Path;

use hopeflow_realtime::domain::logs::{ClosedBy, PublishFacts};
use hopeflow_realtime::domain::metrics;
use sqlparser::dialect::ClickHouseDialect;
use sqlparser::parser::Parser;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/observing.md");
    std::fs::read_to_string(path).expect("docs/observing.md")
}

fn sql_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sql") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The highest `{prefix}N` the query names.
fn highest(query: &str, prefix: &str) -> usize {
    query
        .match_indices(prefix)
        .filter_map(|(at, _)| {
            let digits: String = query[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn dashboard_queries_parse_and_read_the_documented_points() {
    let queries = sql_blocks(&doc());
    // Publishes per minute, p50/p99, timeout share, closes by code, opens,
    // busiest users.
    assert!(queries.len() >= 6, "{} queries", queries.len());
    let facts = PublishFacts {
        user_id: "u",
        envelope_id: "e",
        envelope_type: "t",
        client_count: 1,
        acked: 1,
        timed_out: Some(0),
        closed: Some(0),
        ms: 1,
        bytes: 1,
        keyed: false,
        replayed: false,
        batch: None,
    };
    let points = [
        metrics::publish("u".into(), &facts),
        metrics::socket_open("u".into(), 1),
        metrics::socket_close("u".into(), 1000, ClosedBy::Client, 1),
    ];
    let doubles = points.iter().map(|p| p.doubles.len()).max().unwrap_or(0);
    let blobs = points.iter().map(|p| p.blobs.len()).max().unwrap_or(0);
    for query in &queries {
        let parsed = Parser::parse_sql(&ClickHouseDialect {}, query);
        assert!(parsed.is_ok(), "does not parse: {parsed:?}\n{query}");
        assert!(query.contains("FROM hopeflow_metrics"), "{query}");
        assert!(query.contains("_sample_interval"), "unweighted: {query}");
        assert!(highest(query, "double") <= doubles, "{query}");
        assert!(highest(query, "blob") <= blobs, "{query}");
    }
    let quantiles = queries
        .iter()
        .filter(|q| q.contains("quantileWeighted(0.99, double5, _sample_interval)"))
        .count();
    assert_eq!(quantiles, 1, "the p99 of ms (double5), weighted");
}

#[test]
fn a_broken_query_would_fail() {
    let broken = "SELECT SUM(_sample_interval FROM hopeflow_metrics";
    assert!(Parser::parse_sql(&ClickHouseDialect {}, broken).is_err());
}
