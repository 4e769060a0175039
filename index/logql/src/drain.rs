//! Log patterns mined as Loki's pattern ingester mines them: Drain (He
//! et al., 2017) over each line's tokens, with Loki's settings. A
//! pattern is a line's tokens with `<_>` where lines of its cluster
//! differ; it is also a LogQL pattern filter (`|> "..."`). Where lode's
//! tokens differ from Loki's (ASCII punctuation only, one space kept
//! where a line had several, a JSON message decoded), a pattern may miss
//! lines whose spacing or escapes differ.
//!
//! Tokens: a line is split at spaces (which are kept to join the tokens
//! back), and every ASCII punctuation character but `_ - . : /` is a
//! token of its own. A JSON line's message field (`log`, `message`,
//! `msg`, ...) is tokenized instead, and its pattern is wrapped in `<_>`.
//! Lines under 4 or over 80 tokens, or over 3,000 bytes, are not mined.
//! The tree is 28 tokens deep, 15 children per node (digits go under
//! `<_>`), a line joins the most similar cluster of its leaf if at least
//! 30% of its tokens match, and at most 300 clusters are kept (the least
//! recently matched goes first).

use std::collections::HashMap;

/// The placeholder for tokens that differ within a cluster.
pub const PARAM: &str = "<_>";

const MAX_LINE_BYTES: usize = 3000;
const MIN_TOKENS: usize = 4;
const MAX_TOKENS: usize = 80;
/// Tokens after which the rest of a line is one token.
const TOKEN_CAP: usize = 127;
const MAX_DEPTH: usize = 28;
const MAX_CHILDREN: usize = 15;
const SIMILARITY: f64 = 0.3;
const MAX_CLUSTERS: usize = 300;
/// JSON fields whose text is mined, in Loki's order.
const MESSAGE_FIELDS: [&str; 6] = ["log", "message", "msg", "msg_", "_msg", "content"];

/// A line's tokens, and before each whether a space preceded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub tokens: Vec<String>,
    pub spaced: Vec<bool>,
}

fn splits(c: char) -> bool {
    c == '=' || (c.is_ascii_punctuation() && !matches!(c, '_' | '-' | '.' | ':' | '/'))
}

/// Splits `line` into tokens (see the module's documentation).
pub fn tokenize(line: &str) -> Tokens {
    let mut out = Tokens {
        tokens: Vec::new(),
        spaced: Vec::new(),
    };
    // The token being read, and whether a space came before it.
    let mut current = String::new();
    let mut current_spaced = false;
    let mut space = false;
    let flush = |out: &mut Tokens, current: &mut String, spaced: bool| {
        if !current.is_empty() {
            out.tokens.push(std::mem::take(current));
            out.spaced.push(spaced);
        }
    };
    for (at, c) in line.char_indices() {
        if out.tokens.len() + usize::from(!current.is_empty()) + 1 >= TOKEN_CAP {
            flush(&mut out, &mut current, current_spaced);
            let rest = line.get(at..).unwrap_or("");
            out.spaced.push(space || rest.starts_with(' '));
            out.tokens.push(rest.trim_start().to_owned());
            return out;
        }
        if c == ' ' {
            flush(&mut out, &mut current, current_spaced);
            space = true;
        } else if splits(c) {
            flush(&mut out, &mut current, current_spaced);
            out.tokens.push(c.to_string());
            out.spaced.push(space);
            space = false;
        } else {
            if current.is_empty() {
                current_spaced = space;
                space = false;
            }
            current.push(c);
        }
    }
    flush(&mut out, &mut current, current_spaced);
    out
}

/// What is mined of a line: its message field if it is a JSON object
/// with one (and then its pattern is wrapped in `<_>`), else the line.
fn minable(line: &str) -> Option<(String, bool)> {
    if line.len() > MAX_LINE_BYTES {
        return None;
    }
    if line.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(line)
    {
        let text = MESSAGE_FIELDS
            .iter()
            .find_map(|f| map.get(*f).and_then(serde_json::Value::as_str))?;
        return Some((text.to_owned(), true));
    }
    Some((line.to_owned(), false))
}

/// One cluster: its template and what it counted.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub template: Vec<String>,
    spaced: Vec<bool>,
    /// A JSON line's message: the pattern is wrapped in `<_>`.
    wrapped: bool,
    /// Lines per bucket (the caller's numbering).
    pub counts: HashMap<i64, u64>,
    last_used: u64,
}

impl Cluster {
    /// The pattern: tokens joined as the first line had them, runs of
    /// `<_>` that touch collapsed into one.
    pub fn pattern(&self) -> String {
        let mut out = String::new();
        if self.wrapped {
            out.push_str(PARAM);
        }
        for (i, token) in self.template.iter().enumerate() {
            let spaced = self.spaced.get(i).copied().unwrap_or(true) && !out.is_empty();
            if token == PARAM && !spaced && out.ends_with(PARAM) {
                continue;
            }
            if spaced {
                out.push(' ');
            }
            out.push_str(token);
        }
        if self.wrapped && !out.ends_with(PARAM) {
            out.push_str(PARAM);
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    clusters: Vec<usize>,
}

/// A Drain miner.
#[derive(Debug, Default)]
pub struct Drain {
    /// By token count, then by the first tokens.
    roots: HashMap<usize, Node>,
    clusters: HashMap<usize, Cluster>,
    next_id: usize,
    clock: u64,
    /// Clusters evicted since the tree was last rebuilt: their paths stay
    /// in the tree until then.
    evicted: usize,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Mines one line, counted in `bucket`.
    pub fn train(&mut self, line: &str, bucket: i64) {
        let Some((text, wrapped)) = minable(line) else {
            return;
        };
        let tokens = tokenize(&text);
        let n = tokens.tokens.len();
        if !(MIN_TOKENS..=MAX_TOKENS).contains(&n) {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let found = self.search(&tokens.tokens);
        let id = match found {
            Some(id) => {
                if let Some(cluster) = self.clusters.get_mut(&id) {
                    for (t, token) in cluster.template.iter_mut().zip(&tokens.tokens) {
                        if t != token {
                            *t = PARAM.to_owned();
                        }
                    }
                }
                id
            }
            None => self.add(tokens, wrapped),
        };
        if let Some(cluster) = self.clusters.get_mut(&id) {
            *cluster.counts.entry(bucket).or_default() += 1;
            cluster.last_used = clock;
        }
    }

    /// The leaf a line's tokens lead to, if any.
    fn leaf(&self, tokens: &[String]) -> Option<&Node> {
        let mut node = self.roots.get(&tokens.len())?;
        for token in tokens.iter().take(MAX_DEPTH) {
            node = node
                .children
                .get(token)
                .or_else(|| node.children.get(PARAM))?;
        }
        Some(node)
    }

    /// The most similar cluster of the line's leaf, if similar enough
    /// (ties go to the one with more `<_>`).
    fn search(&self, tokens: &[String]) -> Option<usize> {
        let leaf = self.leaf(tokens)?;
        let mut best: Option<(f64, usize, usize)> = None;
        for id in &leaf.clusters {
            let Some(cluster) = self.clusters.get(id) else {
                continue;
            };
            let (same, params) = cluster.template.iter().zip(tokens).fold(
                (0usize, 0usize),
                |(same, params), (t, token)| {
                    if t == PARAM {
                        (same, params + 1)
                    } else {
                        (same + usize::from(t == token), params)
                    }
                },
            );
            let sim = same as f64 / tokens.len() as f64;
            if best.is_none_or(|(s, p, _)| sim > s || (sim == s && params > p)) {
                best = Some((sim, params, *id));
            }
        }
        best.filter(|(sim, _, _)| *sim >= SIMILARITY)
            .map(|(_, _, id)| id)
    }

    /// A new cluster for the line, placed in the tree (a token with a
    /// digit, or one past a full node, goes under `<_>`).
    fn add(&mut self, tokens: Tokens, wrapped: bool) -> usize {
        if self.clusters.len() >= MAX_CLUSTERS
            && let Some(oldest) = self
                .clusters
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(id, _)| *id)
        {
            self.clusters.remove(&oldest);
            self.evicted += 1;
            if self.evicted >= MAX_CLUSTERS {
                self.rebuild();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.place(id, &tokens.tokens);
        self.clusters.insert(
            id,
            Cluster {
                template: tokens.tokens,
                spaced: tokens.spaced,
                wrapped,
                counts: HashMap::new(),
                last_used: 0,
            },
        );
        id
    }

    /// The tree again from the live clusters only, so that evicted ones
    /// do not leave paths behind (memory stays bounded however many
    /// lines are mined).
    fn rebuild(&mut self) {
        self.roots.clear();
        self.evicted = 0;
        let live: Vec<(usize, Vec<String>)> = self
            .clusters
            .iter()
            .map(|(id, c)| (*id, c.template.clone()))
            .collect();
        for (id, template) in live {
            self.place(id, &template);
        }
    }

    /// Puts cluster `id` in the leaf its tokens lead to.
    fn place(&mut self, id: usize, tokens: &[String]) {
        let mut node = self.roots.entry(tokens.len()).or_default();
        for token in tokens.iter().take(MAX_DEPTH) {
            let key = if token.chars().any(|c| c.is_ascii_digit())
                || (!node.children.contains_key(token) && node.children.len() + 1 >= MAX_CHILDREN)
            {
                PARAM
            } else {
                token.as_str()
            };
            node = node.children.entry(key.to_owned()).or_default();
        }
        let clusters = &self.clusters;
        node.clusters.retain(|id| clusters.contains_key(id));
        node.clusters.push(id);
    }

    /// The clusters mined so far.
    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_at_spaces_and_punctuation_and_join_back() {
        let t = tokenize(r#"GET /api/users/42 status=200 took 15ms (cache "hit")"#);
        assert_eq!(
            t.tokens,
            [
                "GET",
                "/api/users/42",
                "status",
                "=",
                "200",
                "took",
                "15ms",
                "(",
                "cache",
                "\"",
                "hit",
                "\"",
                ")"
            ]
        );
        let cluster = Cluster {
            template: t.tokens,
            spaced: t.spaced,
            wrapped: false,
            counts: HashMap::new(),
            last_used: 0,
        };
        assert_eq!(
            cluster.pattern(),
            r#"GET /api/users/42 status=200 took 15ms (cache "hit")"#
        );
    }

    #[test]
    fn lines_that_differ_in_a_few_tokens_share_a_pattern() {
        let mut drain = Drain::new();
        for i in 0..40 {
            drain.train(&format!("user u{i} logged in from 10.0.0.{i}"), 0);
            drain.train(&format!("disk /dev/sd{} is {}% full", i % 3, 50 + i), 1);
        }
        drain.train("short line", 0);
        let mut patterns: Vec<(String, u64)> =
            drain.clusters().map(|c| (c.pattern(), c.total())).collect();
        patterns.sort();
        assert_eq!(
            patterns,
            [
                ("disk <_> is <_>% full".to_owned(), 40),
                ("user <_> logged in from <_>".to_owned(), 40),
            ]
        );
    }

    #[test]
    fn a_json_lines_message_is_mined_and_wrapped() {
        let mut drain = Drain::new();
        for i in 0..5 {
            drain.train(
                &format!(r#"{{"level":"info","msg":"request {i} served in {i}ms ok"}}"#),
                0,
            );
        }
        let patterns: Vec<String> = drain.clusters().map(Cluster::pattern).collect();
        assert_eq!(patterns, ["<_>request <_> served in <_> ok<_>"]);
    }

    fn nodes(node: &Node) -> usize {
        1 + node.children.values().map(nodes).sum::<usize>()
    }

    #[test]
    fn clusters_and_the_tree_are_bounded() {
        let mut drain = Drain::new();
        for i in 0..(MAX_CLUSTERS * 20) {
            let word: String = (0..6)
                .map(|k| char::from(b'a' + ((i >> (k * 2)) % 26) as u8))
                .collect();
            drain.train(&format!("{word} alpha beta gamma delta {word}"), 0);
        }
        assert!(drain.clusters().count() <= MAX_CLUSTERS);
        let total: usize = drain.roots.values().map(nodes).sum();
        assert!(total <= 2 * MAX_CLUSTERS * 7, "{total} nodes");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Any lines: mining never panics, clusters stay bounded, and a
        /// cluster of one line keeps that line's tokens.
        #[test]
        fn any_lines_are_mined_without_panic(lines in proptest::collection::vec("\\PC{0,120}", 1..40)) {
            let mut drain = Drain::new();
            for (i, line) in lines.iter().enumerate() {
                drain.train(line, i as i64);
                let _ = crate::fields::line_fields(line);
            }
            prop_assert!(drain.clusters().count() <= MAX_CLUSTERS);
            for cluster in drain.clusters() {
                let pattern = cluster.pattern();
                if cluster.total() == 1 && !cluster.wrapped {
                    prop_assert_eq!(tokenize(&pattern).tokens, cluster.template.clone());
                }
            }
        }
    }
}
