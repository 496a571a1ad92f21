//! What the Pod and Node watches keep of each object: the parts of the template data the
//! ClusterSPIFFEIDs' templates (and the parent ID template) can reach, as a [`FieldTree`].
//!
//! The set only grows. When a new or changed ClusterSPIFFEID reaches a field that is not kept,
//! the set widens and the kinds whose objects were converted with the narrower set are relisted
//! once; until each relist is done, pods are not rendered, so no entry is ever rendered from a
//! field that was dropped. Narrowing would need a relist too, for no gain in correctness, so a
//! field once kept stays kept until the operator restarts.

use std::sync::Arc;

use wimsey_core::template::FieldTree;

/// A watched kind whose objects are converted with the kept fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeptKind {
    Pods,
    Nodes,
}

impl KeptKind {
    /// The template data roots this kind's objects fill.
    fn roots(self) -> [&'static str; 2] {
        match self {
            KeptKind::Pods => ["PodMeta", "PodSpec"],
            KeptKind::Nodes => ["NodeMeta", "NodeSpec"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeptKind::Pods => "Pod",
            KeptKind::Nodes => "Node",
        }
    }
}

/// The kept fields as the watches use them: the tree, and per kind a version that changes
/// exactly when that kind's part of the tree widened (its watch relists then).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptFields {
    pub tree: Arc<FieldTree>,
    pub pods: u64,
    pub nodes: u64,
}

impl KeptFields {
    pub fn version(&self, kind: KeptKind) -> u64 {
        match kind {
            KeptKind::Pods => self.pods,
            KeptKind::Nodes => self.nodes,
        }
    }

    fn bump(&mut self, kind: KeptKind) -> u64 {
        let version = match kind {
            KeptKind::Pods => &mut self.pods,
            KeptKind::Nodes => &mut self.nodes,
        };
        *version += 1;
        *version
    }
}

/// True when `kept` already keeps everything `reached` reaches under `kind`'s roots.
pub fn kind_covered(kept: &FieldTree, reached: &FieldTree, kind: KeptKind) -> bool {
    kind.roots()
        .iter()
        .all(|root| match (kept.field(root), reached.field(root)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(mine), Some(theirs)) => mine.covers(theirs),
        })
}

/// The kept fields and the relists they are waiting for.
#[derive(Debug, Default)]
pub struct KeptTracker {
    kept: KeptFields,
    /// Handed to a watch: from then on a widening needs a relist of that kind.
    in_use: bool,
    /// Per kind, the version a relist must have been done at before pods render again.
    awaiting: Vec<(KeptKind, u64)>,
}

impl KeptTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kept fields, for converting objects; marks them in use.
    pub fn hand_out(&mut self) -> KeptFields {
        self.in_use = true;
        self.kept.clone()
    }

    pub fn current(&self) -> &KeptFields {
        &self.kept
    }

    /// The templates now reach `reached`: widens the kept set when needed and returns the kinds
    /// that must be relisted (empty when nothing widened or nothing was converted yet).
    pub fn reached(&mut self, reached: &FieldTree) -> Vec<KeptKind> {
        let widened: Vec<KeptKind> = [KeptKind::Pods, KeptKind::Nodes]
            .into_iter()
            .filter(|kind| !kind_covered(&self.kept.tree, reached, *kind))
            .collect();
        if widened.is_empty() {
            return Vec::new();
        }
        let mut tree = FieldTree::clone(&self.kept.tree);
        tree.merge(reached);
        self.kept.tree = Arc::new(tree);
        let mut relist = Vec::new();
        for kind in widened {
            let version = self.kept.bump(kind);
            if self.in_use {
                self.awaiting.retain(|(k, _)| *k != kind);
                self.awaiting.push((kind, version));
                relist.push(kind);
            }
        }
        relist
    }

    /// A relist of `kind` with the fields of `version` is complete.
    pub fn relisted(&mut self, kind: KeptKind, version: u64) {
        self.awaiting
            .retain(|(k, v)| !(*k == kind && *v <= version));
    }

    /// The relists awaited: kind and the version they must be done at.
    pub fn awaiting(&self) -> Vec<(KeptKind, u64)> {
        self.awaiting.clone()
    }

    /// True while some objects lack fields a template reaches: pods must not render.
    pub fn holding(&self) -> bool {
        !self.awaiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wimsey_core::template::Template;

    fn reached(sources: &[&str]) -> FieldTree {
        let mut tree = FieldTree::new();
        for source in sources {
            Template::parse("t", source).unwrap().reach_into(&mut tree);
        }
        tree
    }

    #[test]
    fn nothing_is_relisted_before_the_fields_are_used() {
        let mut tracker = KeptTracker::new();
        assert!(
            tracker
                .reached(&reached(&["{{ .PodSpec.Hostname }}"]))
                .is_empty()
        );
        assert!(!tracker.holding());
        assert_eq!(tracker.hand_out().pods, 1);
    }

    #[test]
    fn a_template_reaching_a_new_field_relists_that_kind_once() {
        let mut tracker = KeptTracker::new();
        tracker.reached(&reached(&[
            "{{ .PodMeta.Namespace }}",
            "{{ .NodeMeta.UID }}",
        ]));
        let before = tracker.hand_out();

        // Already kept: no relist, nothing held.
        assert!(
            tracker
                .reached(&reached(&["{{ .PodMeta.Namespace }}"]))
                .is_empty()
        );
        assert!(!tracker.holding());

        // The container image is new, for pods only.
        let relist = tracker.reached(&reached(&["{{ (index .PodSpec.Containers 0).Image }}"]));
        assert_eq!(relist, vec![KeptKind::Pods]);
        assert!(tracker.holding());
        let after = tracker.current().clone();
        assert_eq!(after.pods, before.pods + 1);
        assert_eq!(after.nodes, before.nodes);
        // The old fields stay kept.
        assert!(kind_covered(&after.tree, &before.tree, KeptKind::Pods));

        // A relist done with older fields does not count; the right one releases the hold.
        tracker.relisted(KeptKind::Pods, before.pods);
        assert!(tracker.holding());
        tracker.relisted(KeptKind::Nodes, after.pods);
        assert!(tracker.holding());
        tracker.relisted(KeptKind::Pods, after.pods);
        assert!(!tracker.holding());
    }

    #[test]
    fn one_list_with_the_latest_fields_covers_every_widening_before_it() {
        let mut tracker = KeptTracker::new();
        tracker.hand_out();
        tracker.reached(&reached(&["{{ .PodSpec.Hostname }}"]));
        tracker.reached(&reached(&["{{ .PodSpec.Subdomain }}"]));
        assert_eq!(tracker.awaiting().len(), 1, "one relist, not two");
        let latest = tracker.current().pods;
        // A watch that had not listed yet starts with the latest fields: its first list counts.
        tracker.relisted(KeptKind::Pods, latest);
        assert!(!tracker.holding());
    }
}
