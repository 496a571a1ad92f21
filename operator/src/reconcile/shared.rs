//! One copy of the values many pods repeat. Every pod of a Deployment carries the same label
//! map, and the same kept template fields (its containers' names and images, say), so the state
//! keeps each distinct map once and the pods point at it.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use wimsey_core::template::Value;

/// Template fields of one object (`extra_meta`, `extra_spec` of a view), hashable so that equal
/// ones can be shared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fields(pub(super) BTreeMap<String, Value>);

impl Hash for Fields {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.len().hash(state);
        for (name, value) in &self.0 {
            name.hash(state);
            hash_value(value, state);
        }
    }
}

fn hash_value<H: Hasher>(value: &Value, state: &mut H) {
    std::mem::discriminant(value).hash(state);
    match value {
        Value::Nil | Value::Missing => {}
        Value::Bool(b) => b.hash(state),
        Value::Int(i) => i.hash(state),
        Value::String(s) => s.hash(state),
        Value::List(items) => {
            items.len().hash(state);
            for item in items {
                hash_value(item, state);
            }
        }
        Value::Map(map) => {
            map.len().hash(state);
            for (key, item) in map {
                key.hash(state);
                hash_value(item, state);
            }
        }
        Value::Struct { type_name, fields } => {
            type_name.hash(state);
            fields.len().hash(state);
            for (name, item) in fields {
                name.hash(state);
                hash_value(item, state);
            }
        }
    }
}

/// Distinct values, each held once; users hold `Arc`s to them.
#[derive(Debug)]
pub(super) struct SharedPool<T> {
    values: HashSet<Arc<T>>,
}

impl<T> Default for SharedPool<T> {
    fn default() -> Self {
        Self {
            values: HashSet::new(),
        }
    }
}

impl<T: Hash + Eq> SharedPool<T> {
    /// The pool's copy of `value` (adding it when new).
    pub(super) fn share(&mut self, value: T) -> Arc<T> {
        if let Some(shared) = self.values.get(&value) {
            return shared.clone();
        }
        let shared = Arc::new(value);
        self.values.insert(shared.clone());
        shared
    }

    /// A user is done with `value`: the pool forgets it when that user was the last.
    pub(super) fn release(&mut self, value: Arc<T>) {
        // Two references: the pool's and the one handed back.
        if Arc::strong_count(&value) == 2 {
            self.values.remove(&*value);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.values.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_template_fields_share_one_copy() {
        let container = |image: &str| {
            Fields(BTreeMap::from([(
                "Containers".to_owned(),
                Value::List(vec![Value::structure(
                    "v1.Container",
                    [("Image", Value::from(image))],
                )]),
            )]))
        };
        let mut pool = SharedPool::default();
        let a = pool.share(container("app:1"));
        let b = pool.share(container("app:1"));
        let c = pool.share(container("app:2"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn equal_values_share_one_copy_until_the_last_user_releases_it() {
        let mut pool = SharedPool::default();
        let a = pool.share(vec!["app=web".to_owned()]);
        let b = pool.share(vec!["app=web".to_owned()]);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(pool.len(), 1);
        pool.release(a);
        assert_eq!(pool.len(), 1, "b still uses it");
        pool.release(b);
        assert!(pool.is_empty());
    }
}
