//! Catalog answers shared between readers. When a change wakes many blocking readers of
//! the same query (1,000 watchers of one service), the first one builds the answer and
//! the others get the same [`SharedResult`], which is also encoded for the wire only
//! once; repeated non-blocking reads of an unchanged query are answered the same way.
//!
//! An answer is kept with the [`Stamp`] of the catalog it was built from and handed out
//! only while the catalog's stamp for that query is the same, so a shared answer is
//! exactly what building it again would give. The cache is bounded in entries and in
//! items held; the least recently used entries go first.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_net::rpc::catalog::{CatalogQuery, CatalogResult, SharedResult};

/// What an answer was built from: (snapshot restores, from
/// `StateMachine::catalog_restores`; the query's own index where the catalog tracks one,
/// a service's instances, otherwise the catalog's index, `Catalog::index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp(pub u64, pub u64);

/// Most answers kept.
const MAX_ENTRIES: usize = 256;
/// Most items (nodes, services, checks) kept over all answers: with a few hundred bytes
/// per item, tens of MiB at most.
const MAX_ITEMS: usize = 100_000;

struct Entry {
    stamp: Stamp,
    index: u64,
    answer: Arc<SharedResult>,
    items: usize,
    used: u64,
}

#[derive(Default)]
pub(super) struct AnswerCache {
    map: HashMap<CatalogQuery, Entry>,
    items: usize,
    clock: u64,
}

impl AnswerCache {
    /// The answer to `q` and its index, if one was built from the catalog as it is now.
    pub(super) fn get(
        &mut self,
        q: &CatalogQuery,
        stamp: Stamp,
    ) -> Option<(Arc<SharedResult>, u64)> {
        self.clock += 1;
        let e = self.map.get_mut(q)?;
        if e.stamp != stamp {
            return None;
        }
        e.used = self.clock;
        Some((e.answer.clone(), e.index))
    }

    /// Keeps `answer` (with its index) for `q` as built from the catalog at `stamp`,
    /// replacing an older one; an answer larger than half the budget is not kept.
    pub(super) fn insert(
        &mut self,
        q: CatalogQuery,
        stamp: Stamp,
        index: u64,
        answer: Arc<SharedResult>,
    ) {
        self.clock += 1;
        if let Some(old) = self.map.remove(&q) {
            self.items -= old.items;
        }
        let items = items(answer.result());
        if items > MAX_ITEMS / 2 {
            return;
        }
        while self.map.len() >= MAX_ENTRIES || self.items + items > MAX_ITEMS {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.items -= e.items;
            }
        }
        self.items += items;
        self.map.insert(
            q,
            Entry {
                stamp,
                index,
                answer,
                items,
                used: self.clock,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// How much an answer holds, counted in records (at least 1).
fn items(r: &CatalogResult) -> usize {
    1 + match r {
        CatalogResult::Nodes(n) => n.len(),
        CatalogResult::Services(s) => s.iter().map(|(_, tags)| 1 + tags.len()).sum(),
        CatalogResult::Instances(i) => i.iter().map(|i| 2 + i.checks.len()).sum(),
        CatalogResult::NodeServices(_, s) => 1 + s.len(),
        CatalogResult::Checks(c) => c.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::catalog::Node;

    fn query(name: &str) -> CatalogQuery {
        CatalogQuery::Service {
            name: name.into(),
            tag: None,
            passing_only: true,
        }
    }

    fn nodes(n: usize) -> Arc<SharedResult> {
        let node = |i: usize| Node {
            name: format!("n{i}"),
            ..Node::default()
        };
        Arc::new(SharedResult::new(CatalogResult::Nodes(
            (0..n).map(node).collect(),
        )))
    }

    #[test]
    fn an_answer_is_shared_only_while_its_stamp_holds() {
        let mut c = AnswerCache::default();
        let a = nodes(3);
        c.insert(query("web"), Stamp(0, 7), 7, a.clone());
        let (got, index) = c.get(&query("web"), Stamp(0, 7)).unwrap();
        assert!(Arc::ptr_eq(&got, &a));
        assert_eq!(index, 7);
        // The service changed, or a snapshot replaced the catalog: build it again.
        assert!(c.get(&query("web"), Stamp(0, 8)).is_none());
        assert!(c.get(&query("web"), Stamp(1, 7)).is_none());
        // Another query never gets it.
        assert!(c.get(&query("db"), Stamp(0, 7)).is_none());
        let tagged = CatalogQuery::Service {
            name: "web".into(),
            tag: Some("v1".into()),
            passing_only: true,
        };
        assert!(c.get(&tagged, Stamp(0, 7)).is_none());
        // A newer answer replaces the older one.
        let b = nodes(2);
        c.insert(query("web"), Stamp(0, 8), 8, b.clone());
        assert!(Arc::ptr_eq(
            &c.get(&query("web"), Stamp(0, 8)).unwrap().0,
            &b
        ));
        assert_eq!(c.len(), 1);
        assert_eq!(c.items, 3);
    }

    #[test]
    fn the_least_recently_used_answers_go_first_when_full() {
        let mut c = AnswerCache::default();
        for i in 0..MAX_ENTRIES {
            c.insert(query(&format!("s{i}")), Stamp(0, 1), 1, nodes(1));
        }
        // s0 is read again, so s1 is the oldest.
        assert!(c.get(&query("s0"), Stamp(0, 1)).is_some());
        c.insert(query("new"), Stamp(0, 1), 1, nodes(1));
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.get(&query("s0"), Stamp(0, 1)).is_some());
        assert!(c.get(&query("s1"), Stamp(0, 1)).is_none());
        assert!(c.get(&query("new"), Stamp(0, 1)).is_some());
    }

    #[test]
    fn the_item_budget_holds() {
        let mut c = AnswerCache::default();
        let big = MAX_ITEMS / 2 - 1; // counts as MAX_ITEMS / 2 with its own item
        c.insert(query("a"), Stamp(0, 1), 1, nodes(big));
        c.insert(query("b"), Stamp(0, 1), 1, nodes(big));
        assert_eq!(c.items, MAX_ITEMS);
        c.insert(query("c"), Stamp(0, 1), 1, nodes(10));
        assert!(c.items <= MAX_ITEMS);
        assert!(c.get(&query("a"), Stamp(0, 1)).is_none());
        assert!(c.get(&query("c"), Stamp(0, 1)).is_some());
        // Too big to keep at all.
        c.insert(query("huge"), Stamp(0, 1), 1, nodes(MAX_ITEMS));
        assert!(c.get(&query("huge"), Stamp(0, 1)).is_none());
        assert!(c.items <= MAX_ITEMS);
    }
}
