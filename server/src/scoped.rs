//! The index as one caller may read it: every query restricted to the
//! caller's tenants. Reads reach the index only through this type (see
//! [`crate::Service::timed`]), so none can forget the restriction.

use lode_engine::LogRecord;
use lode_index::{FacetField, Histogram, Index, Page, Search, Tail};

/// An [`Index`] restricted to some tenants' records.
#[derive(Debug, Clone, Copy)]
pub struct Scoped<'a> {
    index: &'a Index,
    tenants: &'a [String],
}

type Result<T> = lode_index::Result<T>;

impl<'a> Scoped<'a> {
    pub(crate) fn new(index: &'a Index, tenants: &'a [String]) -> Scoped<'a> {
        Scoped { index, tenants }
    }

    /// The tenants this reader sees.
    pub fn tenants(&self) -> &'a [String] {
        self.tenants
    }

    pub fn search(&self, search: Search) -> Result<Page> {
        self.index.search(&Search {
            tenants: Some(self.tenants.to_vec()),
            ..search
        })
    }

    pub fn count(&self, query: &str, since: Option<i64>, until: Option<i64>) -> Result<u64> {
        self.index.count(query, Some(self.tenants), since, until)
    }

    pub fn histogram(
        &self,
        query: &str,
        since: Option<i64>,
        until: Option<i64>,
        width: Option<i64>,
    ) -> Result<Histogram> {
        self.index
            .histogram(query, Some(self.tenants), since, until, width)
    }

    pub fn histogram_at(
        &self,
        query: &str,
        origin: i64,
        width: i64,
        buckets: usize,
    ) -> Result<Vec<u64>> {
        self.index
            .histogram_at(query, Some(self.tenants), origin, width, buckets)
    }

    pub fn top_values(
        &self,
        query: &str,
        since: Option<i64>,
        until: Option<i64>,
        field: FacetField,
        k: usize,
    ) -> Result<Vec<(String, u64)>> {
        self.index
            .top_values(query, Some(self.tenants), since, until, field, k)
    }

    pub fn for_each_match(
        &self,
        query: &str,
        since: Option<i64>,
        until: Option<i64>,
        visit: &mut dyn FnMut(u64, &LogRecord) -> bool,
    ) -> Result<()> {
        self.index
            .for_each_match(query, Some(self.tenants), since, until, visit)
    }

    pub fn visit_matches(
        &self,
        query: &str,
        since: Option<i64>,
        until: Option<i64>,
        visit: &mut dyn FnMut(u64, lode_engine::RecordRef<'_>) -> bool,
    ) -> Result<()> {
        self.index
            .visit_matches(query, Some(self.tenants), since, until, visit)
    }

    /// Waits until every record through `seq` is searchable.
    pub fn wait_indexed(&self, seq: u64, timeout: std::time::Duration) -> bool {
        self.index.wait_indexed(seq, timeout)
    }

    pub fn tail(&self, query: &str, from_seq: u64) -> Result<Tail> {
        self.index.tail(query, Some(self.tenants), from_seq)
    }
}
