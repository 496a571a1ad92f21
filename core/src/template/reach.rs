//! Which parts of the data a template can reach, found from its parse tree without rendering.
//!
//! The operator keeps only these parts of each watched object (issue 10: a realistic pod's whole
//! ObjectMeta and PodSpec as template values cost ~130 KiB). The answer is conservative: a value
//! a template prints, compares, tests, measures or hands to a function is reached whole; only
//! field chains, `index` with constant keys and `range` are followed into the value, because
//! those read parts of it and nothing else. So rendering from the reached parts gives the same
//! bytes as rendering from everything.

use std::collections::BTreeMap;

use super::parse::{Branch, Command, Node, Operand, Pipeline, Term};

/// A set of paths into template data. A path names struct fields (Go names) and map keys;
/// [`FieldTree::elements`] stands for every element of a list or every key of a map.
///
/// A node is either reached whole (everything below it), or reached in part: only its listed
/// children (a node with no children is reached for its own existence and scalar value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    whole: bool,
    children: BTreeMap<String, FieldTree>,
    elements: Option<Box<FieldTree>>,
}

/// What a step into a value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A struct field or a map key.
    Name(String),
    /// Any element of a list, any key of a map.
    Element,
}

static WHOLE: FieldTree = FieldTree {
    whole: true,
    children: BTreeMap::new(),
    elements: None,
};

impl FieldTree {
    /// Nothing reached.
    pub const fn new() -> Self {
        Self {
            whole: false,
            children: BTreeMap::new(),
            elements: None,
        }
    }

    /// Everything reached (what a template printing `{{ . }}` needs).
    pub fn everything() -> Self {
        WHOLE.clone()
    }

    pub fn is_whole(&self) -> bool {
        self.whole
    }

    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty() && self.elements.is_none()
    }

    /// The part reached below field or key `name`, if any.
    pub fn child(&self, name: &str) -> Option<&FieldTree> {
        if self.whole {
            return Some(&WHOLE);
        }
        self.children.get(name).or(self.elements.as_deref())
    }

    /// The part reached below a struct field `name` (element wildcards do not apply to structs).
    pub fn field(&self, name: &str) -> Option<&FieldTree> {
        if self.whole {
            return Some(&WHOLE);
        }
        self.children.get(name)
    }

    /// The part reached below every element of a list.
    pub fn element(&self) -> Option<&FieldTree> {
        if self.whole {
            return Some(&WHOLE);
        }
        self.elements.as_deref()
    }

    /// Whether map key `key` is reached (by name or as any element).
    pub fn keeps_key(&self, key: &str) -> bool {
        self.whole || self.elements.is_some() || self.children.contains_key(key)
    }

    /// Marks `path` reached; `whole` marks everything below its end too.
    pub fn insert(&mut self, path: &[Step], whole: bool) {
        let mut node = self;
        for step in path {
            if node.whole {
                return;
            }
            node = match step {
                Step::Name(name) => node.children.entry(name.clone()).or_default(),
                Step::Element => node.elements.get_or_insert_with(Box::default),
            };
        }
        if whole {
            *node = Self::everything();
        }
    }

    /// Adds everything `other` reaches.
    pub fn merge(&mut self, other: &FieldTree) {
        if self.whole {
            return;
        }
        if other.whole {
            *self = Self::everything();
            return;
        }
        for (name, child) in &other.children {
            self.children.entry(name.clone()).or_default().merge(child);
        }
        if let Some(other_elements) = &other.elements {
            self.elements
                .get_or_insert_with(Box::default)
                .merge(other_elements);
        }
    }

    /// True when everything `other` reaches is reached here too.
    pub fn covers(&self, other: &FieldTree) -> bool {
        if self.whole {
            return true;
        }
        if other.whole {
            return false;
        }
        let children = other.children.iter().all(|(name, child)| {
            self.children
                .get(name)
                .or(self.elements.as_deref())
                .is_some_and(|mine| mine.covers(child))
        });
        let elements = match (&other.elements, &self.elements) {
            (None, _) => true,
            (Some(theirs), Some(mine)) => mine.covers(theirs),
            (Some(_), None) => false,
        };
        children && elements
    }
}

/// Where a value in the template came from.
#[derive(Debug, Clone)]
enum Origin {
    /// A path into the data.
    Data(Vec<Step>),
    /// A literal, a function's result, or a value already reached whole.
    Detached,
}

struct Walker<'t> {
    tree: &'t mut FieldTree,
    vars: Vec<(String, Origin)>,
}

/// Everything `nodes` can reach from the data root.
pub(super) fn reach(nodes: &[Node], tree: &mut FieldTree) {
    let mut walker = Walker {
        tree,
        vars: vec![("$".to_owned(), Origin::Data(Vec::new()))],
    };
    walker.list(nodes, &Origin::Data(Vec::new()));
}

impl Walker<'_> {
    fn list(&mut self, nodes: &[Node], dot: &Origin) {
        for node in nodes {
            self.node(node, dot);
        }
    }

    fn node(&mut self, node: &Node, dot: &Origin) {
        match node {
            Node::Text(_) => {}
            Node::Action(pipe) => {
                let value = self.pipeline(pipe, dot);
                if pipe.vars.is_empty() {
                    self.use_whole(&value);
                } else {
                    self.bind(pipe, value);
                }
            }
            Node::If(branch) => self.conditional(branch, dot, false),
            Node::With(branch) => self.conditional(branch, dot, true),
            Node::Range(branch) => self.range(branch, dot),
        }
    }

    /// `if` and `with` test the value's truth, which may depend on all of it.
    fn conditional(&mut self, branch: &Branch, dot: &Origin, is_with: bool) {
        let scope = self.vars.len();
        let value = self.pipeline(&branch.pipe, dot);
        self.use_whole(&value);
        self.bind(&branch.pipe, Origin::Detached);
        let inner = if is_with {
            Origin::Detached
        } else {
            dot.clone()
        };
        self.list(&branch.then, &inner);
        self.vars.truncate(scope);
        self.list(&branch.otherwise, dot);
    }

    /// `range` reads every element (every key of a map), and what its body reads of each.
    fn range(&mut self, branch: &Branch, dot: &Origin) {
        let scope = self.vars.len();
        let value = self.pipeline(&branch.pipe, dot);
        let element = match &value {
            Origin::Data(path) => {
                let mut path = path.clone();
                path.push(Step::Element);
                self.tree.insert(&path, false);
                Origin::Data(path)
            }
            Origin::Detached => Origin::Detached,
        };
        match branch.pipe.vars.as_slice() {
            [elem] => self.vars.push((elem.clone(), element.clone())),
            [key, elem] => {
                self.vars.push((key.clone(), Origin::Detached));
                self.vars.push((elem.clone(), element.clone()));
            }
            _ => {}
        }
        self.list(&branch.then, &element);
        self.vars.truncate(scope);
        self.list(&branch.otherwise, dot);
    }

    fn bind(&mut self, pipe: &Pipeline, value: Origin) {
        for name in &pipe.vars {
            if pipe.assign {
                // The variable may hold either value from here on: both are reached whole.
                let old = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, o)| o.clone());
                if let Some(old) = old {
                    self.use_whole(&old);
                }
                self.use_whole(&value);
                if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    slot.1 = Origin::Detached;
                }
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
    }

    fn use_whole(&mut self, value: &Origin) {
        if let Origin::Data(path) = value {
            self.tree.insert(path, true);
        }
    }

    fn pipeline(&mut self, pipe: &Pipeline, dot: &Origin) -> Origin {
        let mut last: Option<Origin> = None;
        for cmd in &pipe.cmds {
            last = Some(self.command(cmd, dot, last));
        }
        last.unwrap_or(Origin::Detached)
    }

    fn command(&mut self, cmd: &Command, dot: &Origin, piped: Option<Origin>) -> Origin {
        let Some(first) = cmd.args.first() else {
            return Origin::Detached;
        };
        if let (Term::Func(name), []) = (&first.term, first.chain.as_slice()) {
            return self.call(name, &cmd.args[1..], piped, dot);
        }
        if let Some(piped) = piped {
            self.use_whole(&piped);
        }
        for extra in &cmd.args[1..] {
            let value = self.operand(extra, dot);
            self.use_whole(&value);
        }
        self.operand(first, dot)
    }

    fn call(
        &mut self,
        name: &str,
        args: &[Operand],
        piped: Option<Origin>,
        dot: &Origin,
    ) -> Origin {
        if name == "index"
            && piped.is_none()
            && let Some((collection, keys)) = args.split_first()
        {
            let base = self.operand(collection, dot);
            let steps: Option<Vec<Step>> = keys.iter().map(constant_key).collect();
            if let (Origin::Data(mut path), Some(steps)) = (base.clone(), steps) {
                path.extend(steps);
                return Origin::Data(path);
            }
            self.use_whole(&base);
            for key in keys {
                let value = self.operand(key, dot);
                self.use_whole(&value);
            }
            return Origin::Detached;
        }
        // Every other function (and `and`/`or`, which return one of their arguments) may look at
        // all of each argument.
        for arg in args {
            let value = self.operand(arg, dot);
            self.use_whole(&value);
        }
        if let Some(piped) = piped {
            self.use_whole(&piped);
        }
        Origin::Detached
    }

    fn operand(&mut self, op: &Operand, dot: &Origin) -> Origin {
        let base = match &op.term {
            Term::Dot => dot.clone(),
            Term::Var(name) => self
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map_or(Origin::Detached, |(_, origin)| origin.clone()),
            Term::Sub(pipe) => self.pipeline(pipe, dot),
            Term::Func(name) => self.call(name, &[], None, dot),
            Term::Str(_) | Term::Int(_) | Term::Bool(_) | Term::Nil => Origin::Detached,
        };
        match base {
            Origin::Data(mut path) => {
                path.extend(op.chain.iter().map(|name| Step::Name(name.clone())));
                Origin::Data(path)
            }
            Origin::Detached => Origin::Detached,
        }
    }
}

/// `index` with a constant key reads one element: a map key by name, a list element as any.
fn constant_key(op: &Operand) -> Option<Step> {
    if !op.chain.is_empty() {
        return None;
    }
    match &op.term {
        Term::Str(key) => Some(Step::Name(key.clone())),
        Term::Int(_) => Some(Step::Element),
        _ => None,
    }
}
