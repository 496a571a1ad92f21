//! Evaluation of a parsed template against a [`Value`], with Go text/template semantics.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Pos;
use super::parse::{Branch, Command, Node, Operand, Pipeline, Term};
use super::value::Value;

#[derive(Debug)]
pub(super) struct ExecError {
    pub pos: Pos,
    pub context: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, ExecError>;

fn fail<T>(pos: Pos, context: &str, message: impl Into<String>) -> Result<T> {
    Err(ExecError {
        pos,
        context: context.to_owned(),
        message: message.into(),
    })
}

/// Upper bound on output size, so a hostile template cannot exhaust memory through `range`.
const MAX_OUTPUT: usize = 1 << 20;

struct State<'d> {
    /// The data, which `$` names unless a template assigns `$`; borrowed, as cloning it for every
    /// render would copy every pod's labels again.
    root: &'d Value,
    /// What `$` holds after a template assigns it.
    assigned_root: Option<Value>,
    vars: Vec<(String, Value)>,
    out: String,
}

pub(super) fn render(nodes: &[Node], data: &Value) -> Result<String> {
    let mut state = State {
        root: data,
        assigned_root: None,
        vars: Vec::new(),
        out: String::new(),
    };
    state.walk_list(nodes, data)?;
    Ok(state.out)
}

impl State<'_> {
    fn walk_list(&mut self, nodes: &[Node], dot: &Value) -> Result<()> {
        for node in nodes {
            self.walk(node, dot)?;
        }
        Ok(())
    }

    fn walk(&mut self, node: &Node, dot: &Value) -> Result<()> {
        match node {
            Node::Text(text) => self.emit(text, Pos::default()),
            Node::Action(pipe) => {
                let value = self.pipeline(pipe, dot)?;
                if pipe.vars.is_empty() {
                    self.emit(&value.to_string(), pipe.pos)
                } else {
                    self.bind(pipe, value);
                    Ok(())
                }
            }
            Node::If(branch) => self.conditional(branch, dot, false),
            Node::With(branch) => self.conditional(branch, dot, true),
            Node::Range(branch) => self.range(branch, dot),
        }
    }

    fn emit(&mut self, text: &str, pos: Pos) -> Result<()> {
        if self.out.len() + text.len() > MAX_OUTPUT {
            return fail(pos, "", "output exceeds 1 MiB");
        }
        self.out.push_str(text);
        Ok(())
    }

    fn bind(&mut self, pipe: &Pipeline, value: Value) {
        for name in &pipe.vars {
            if pipe.assign {
                if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    slot.1 = value.clone();
                } else if name == "$" {
                    // `$` is declared before the template starts.
                    self.assigned_root = Some(value.clone());
                }
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
    }

    fn conditional(&mut self, branch: &Branch, dot: &Value, is_with: bool) -> Result<()> {
        let scope = self.vars.len();
        let value = self.pipeline(&branch.pipe, dot)?;
        self.bind(&branch.pipe, value.clone());
        let result = if value.is_true() {
            if is_with {
                self.walk_list(&branch.then, &value)
            } else {
                self.walk_list(&branch.then, dot)
            }
        } else {
            self.walk_list(&branch.otherwise, dot)
        };
        self.vars.truncate(scope);
        result
    }

    fn range(&mut self, branch: &Branch, dot: &Value) -> Result<()> {
        let value = self.pipeline(&branch.pipe, dot)?;
        let items: Vec<(Value, Value)> = match value {
            Value::List(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Int(i as i64), v))
                .collect(),
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| (Value::String(k), v))
                .collect(),
            Value::Nil | Value::Missing => Vec::new(),
            Value::Int(n) => (0..n.max(0))
                .map(|i| (Value::Int(i), Value::Int(i)))
                .collect(),
            other => {
                return fail(
                    branch.pipe.pos,
                    "range",
                    format!("range can't iterate over {other}"),
                );
            }
        };
        if items.is_empty() {
            return self.walk_list(&branch.otherwise, dot);
        }
        for (key, element) in items {
            let scope = self.vars.len();
            match branch.pipe.vars.as_slice() {
                [elem] => self.vars.push((elem.clone(), element.clone())),
                [k, elem] => {
                    self.vars.push((k.clone(), key));
                    self.vars.push((elem.clone(), element.clone()));
                }
                _ => {}
            }
            let result = self.walk_list(&branch.then, &element);
            self.vars.truncate(scope);
            result?;
        }
        Ok(())
    }

    fn pipeline(&self, pipe: &Pipeline, dot: &Value) -> Result<Value> {
        let mut last: Option<Value> = None;
        for cmd in &pipe.cmds {
            last = Some(self.command(cmd, dot, last)?);
        }
        Ok(last.unwrap_or(Value::Missing))
    }

    fn command(&self, cmd: &Command, dot: &Value, piped: Option<Value>) -> Result<Value> {
        let Some(first) = cmd.args.first() else {
            return Ok(Value::Missing);
        };
        if let (Term::Func(name), []) = (&first.term, first.chain.as_slice()) {
            return self.call(name, first, &cmd.args[1..], piped, dot);
        }
        if cmd.args.len() > 1 || piped.is_some() {
            return fail(
                first.pos,
                &first.text,
                format!("can't give argument to non-function {}", first.text),
            );
        }
        self.operand(first, dot)
    }

    fn operand(&self, op: &Operand, dot: &Value) -> Result<Value> {
        let owned;
        let base: &Value = match &op.term {
            Term::Dot => dot,
            Term::Var(name) => match self.vars.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => v,
                None if name == "$" => self.assigned_root.as_ref().unwrap_or(self.root),
                None => return fail(op.pos, &op.text, format!("undefined variable: {name}")),
            },
            Term::Str(s) => {
                owned = Value::String(s.clone());
                &owned
            }
            Term::Int(n) => {
                owned = Value::Int(*n);
                &owned
            }
            Term::Bool(b) => {
                owned = Value::Bool(*b);
                &owned
            }
            Term::Nil => {
                if op.chain.is_empty() {
                    return fail(op.pos, &op.text, "nil is not a command");
                }
                owned = Value::Nil;
                &owned
            }
            Term::Sub(pipe) => {
                owned = self.pipeline(pipe, dot)?;
                &owned
            }
            Term::Func(name) => {
                // A function used as an argument is called with no arguments, as in Go.
                owned = self.call(name, op, &[], None, dot)?;
                &owned
            }
        };
        // Walk the chain by reference and clone only the result.
        let mut current = base;
        for name in &op.chain {
            current = field(current, name).or_else(|message| fail(op.pos, &op.text, message))?;
        }
        Ok(current.clone())
    }

    fn call(
        &self,
        name: &str,
        op: &Operand,
        args: &[Operand],
        piped: Option<Value>,
        dot: &Value,
    ) -> Result<Value> {
        let ctx = &op.text;
        let pos = op.pos;
        // and/or evaluate lazily and return the deciding argument itself.
        if name == "and" || name == "or" {
            let total = args.len() + usize::from(piped.is_some());
            if total == 0 {
                return fail(
                    pos,
                    ctx,
                    format!("wrong number of args for {name}: want at least 1 got 0"),
                );
            }
            let mut last = Value::Missing;
            for arg in args {
                last = self.operand(arg, dot)?;
                if last.is_true() != (name == "and") {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            return Ok(last);
        }
        let mut values = Vec::with_capacity(args.len() + 1);
        for arg in args {
            values.push(self.operand(arg, dot)?);
        }
        values.extend(piped);
        call_builtin(name, values)
            .or_else(|message| fail(pos, ctx, format!("error calling {name}: {message}")))
    }
}

/// Field access with Go's struct/map distinction and default `missingkey` behaviour.
fn field<'v>(receiver: &'v Value, name: &str) -> std::result::Result<&'v Value, String> {
    static MISSING: Value = Value::Missing;
    match receiver {
        Value::Struct { type_name, fields } => fields
            .get(name)
            .ok_or_else(|| format!("can't evaluate field {name} in type {type_name}")),
        Value::Map(map) => Ok(map.get(name).unwrap_or(&MISSING)),
        Value::Missing => Ok(&MISSING),
        Value::Nil => Err(format!("nil pointer evaluating {name}")),
        other => Err(format!(
            "can't evaluate field {name} in type {}",
            other.type_name()
        )),
    }
}

fn arity(values: &[Value], want: usize) -> std::result::Result<(), String> {
    if values.len() != want {
        return Err(format!(
            "wrong number of args: want {want} got {}",
            values.len()
        ));
    }
    Ok(())
}

fn call_builtin(name: &str, mut values: Vec<Value>) -> std::result::Result<Value, String> {
    match name {
        "not" => {
            arity(&values, 1)?;
            Ok(Value::Bool(!values[0].is_true()))
        }
        "len" => {
            arity(&values, 1)?;
            match &values[0] {
                Value::String(s) => Ok(Value::Int(s.len() as i64)),
                Value::List(l) => Ok(Value::Int(l.len() as i64)),
                Value::Map(m) => Ok(Value::Int(m.len() as i64)),
                other => Err(format!("len of type {}", other.type_name())),
            }
        }
        "index" => {
            if values.is_empty() {
                return Err("wrong number of args: want at least 1 got 0".into());
            }
            let item = values.remove(0);
            values.into_iter().try_fold(item, index_one)
        }
        "slice" => {
            if values.is_empty() || values.len() > 3 {
                return Err(format!(
                    "wrong number of args: want 1 to 3 got {}",
                    values.len()
                ));
            }
            let item = values.remove(0);
            let bounds: Vec<usize> = values
                .iter()
                .map(|v| match v {
                    Value::Int(n) if *n >= 0 => Ok(*n as usize),
                    other => Err(format!("cannot index slice/array with {other}")),
                })
                .collect::<std::result::Result<_, _>>()?;
            let len = match &item {
                Value::String(s) => s.len(),
                Value::List(l) => l.len(),
                other => return Err(format!("can't slice item of type {}", other.type_name())),
            };
            let start = bounds.first().copied().unwrap_or(0);
            let end = bounds.get(1).copied().unwrap_or(len);
            if start > end || end > len {
                return Err(format!("index out of range: {start}:{end}"));
            }
            match item {
                Value::String(s) => s
                    .get(start..end)
                    .map(|x| Value::String(x.to_owned()))
                    .ok_or_else(|| "slice splits a UTF-8 character".to_owned()),
                Value::List(l) => Ok(Value::List(l[start..end].to_vec())),
                _ => Err("unreachable slice".into()),
            }
        }
        "printf" => {
            if values.is_empty() {
                return Err("wrong number of args: want at least 1 got 0".into());
            }
            let format = match values.remove(0) {
                Value::String(f) => f,
                other => {
                    return Err(format!(
                        "format must be a string, not {}",
                        other.type_name()
                    ));
                }
            };
            Ok(Value::String(sprintf(&format, &values)))
        }
        "print" => Ok(Value::String(sprint(&values))),
        "println" => {
            let mut s = values.iter().map(arg_display).collect::<Vec<_>>().join(" ");
            s.push('\n');
            Ok(Value::String(s))
        }
        "eq" => {
            if values.len() < 2 {
                return Err("missing argument for comparison".into());
            }
            let first = values.remove(0);
            for other in &values {
                if compare(&first, other)? == std::cmp::Ordering::Equal {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" | "lt" | "le" | "gt" | "ge" => {
            arity(&values, 2)?;
            let ord = compare(&values[0], &values[1])?;
            if name != "ne" && matches!(values[0], Value::Bool(_)) {
                return Err("invalid type for comparison".into());
            }
            use std::cmp::Ordering::*;
            Ok(Value::Bool(match name {
                "ne" => ord != Equal,
                "lt" => ord == Less,
                "le" => ord != Greater,
                "gt" => ord == Greater,
                _ => ord != Less,
            }))
        }
        other => Err(format!("function {other:?} not defined")),
    }
}

/// One step of `index`: a missing map key gives the element type's zero value, not `<no value>`.
fn index_one(item: Value, key: Value) -> std::result::Result<Value, String> {
    match (item, key) {
        (Value::Map(map), Value::String(k)) => Ok(match map.get(&k) {
            Some(v) => v.clone(),
            None => zero_of_elements(&map),
        }),
        (Value::Map(_), other) => Err(format!(
            "value has type {}; should be string",
            other.type_name()
        )),
        (Value::List(list), Value::Int(i)) => usize::try_from(i)
            .ok()
            .and_then(|i| list.get(i).cloned())
            .ok_or_else(|| format!("index out of range: {i}")),
        (Value::String(s), Value::Int(i)) => usize::try_from(i)
            .ok()
            .and_then(|i| s.as_bytes().get(i).copied())
            .map(|b| Value::Int(i64::from(b)))
            .ok_or_else(|| format!("index out of range: {i}")),
        (Value::List(_) | Value::String(_), other) => Err(format!(
            "cannot index slice/array with type {}",
            other.type_name()
        )),
        (Value::Nil | Value::Missing, _) => Err("index of untyped nil".into()),
        (other, _) => Err(format!("can't index item of type {}", other.type_name())),
    }
}

/// The zero value of a map's element type, inferred from its values (string maps by default).
fn zero_of_elements(map: &BTreeMap<String, Value>) -> Value {
    match map.values().next() {
        Some(Value::Int(_)) => Value::Int(0),
        Some(Value::Bool(_)) => Value::Bool(false),
        Some(Value::List(_) | Value::Map(_) | Value::Nil) => Value::Nil,
        _ => Value::String(String::new()),
    }
}

fn compare(a: &Value, b: &Value) -> std::result::Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Missing, _) | (_, Value::Missing) => Err("invalid type for comparison".into()),
        (Value::Nil, Value::Nil) => Ok(std::cmp::Ordering::Equal),
        (Value::List(_) | Value::Map(_) | Value::Struct { .. }, _) => {
            Err(format!("non-comparable type {}", a.type_name()))
        }
        _ => Err("incompatible types for comparison".into()),
    }
}

/// How a value prints as a function argument: Go turns a missing value into a nil interface.
fn arg_display(v: &Value) -> String {
    match v {
        Value::Missing => "<nil>".to_owned(),
        other => other.to_string(),
    }
}

/// Go's `fmt.Sprint`: spaces go between operands when neither side is a string.
fn sprint(values: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 && !matches!(v, Value::String(_)) && !matches!(values[i - 1], Value::String(_)) {
            out.push(' ');
        }
        out.push_str(&arg_display(v));
    }
    out
}

fn go_type(v: &Value) -> &str {
    match v {
        Value::Missing | Value::Nil => "<nil>",
        other => other.type_name(),
    }
}

fn bad_verb(verb: char, v: &Value) -> String {
    match v {
        Value::Nil | Value::Missing => format!("%!{verb}(<nil>)"),
        other => format!("%!{verb}({}={})", go_type(other), other),
    }
}

/// The subset of Go's `fmt.Sprintf` that templates use: flags `-`, `0`, `+`, width, precision for
/// strings, and the verbs `v s d q x X t c %`, with Go's `%!verb(type=value)` error forms.
fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut next = 0usize;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = 0usize;
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = width
                .saturating_mul(10)
                .saturating_add(d as usize)
                .min(1024);
            chars.next();
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p.saturating_mul(10).saturating_add(d as usize).min(1024);
                chars.next();
            }
            precision = Some(p);
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let numeric = matches!(arg, Value::Int(_));
        let text = match (verb, arg) {
            ('v', Value::Int(n)) | ('d', Value::Int(n)) if plus && *n >= 0 => format!("+{n}"),
            ('v', v) => arg_display(v),
            ('s', Value::String(s)) => match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s', v @ (Value::List(_) | Value::Map(_) | Value::Struct { .. } | Value::Bool(_))) => {
                if matches!(v, Value::Bool(_)) {
                    bad_verb('s', v)
                } else {
                    v.to_string()
                }
            }
            ('d', Value::Int(n)) => n.to_string(),
            ('t', Value::Bool(b)) => b.to_string(),
            ('q', Value::String(s)) => format!("{s:?}"),
            ('q', Value::Int(n)) => match u32::try_from(*n).ok().and_then(char::from_u32) {
                Some(ch) => format!("{ch:?}"),
                None => bad_verb('q', arg),
            },
            ('c', Value::Int(n)) => u32::try_from(*n)
                .ok()
                .and_then(char::from_u32)
                .map(String::from)
                .unwrap_or_default(),
            ('x', Value::Int(n)) => format!("{n:x}"),
            ('X', Value::Int(n)) => format!("{n:X}"),
            ('x', Value::String(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Value::String(s)) => s.bytes().map(|b| format!("{b:02X}")).collect(),
            (verb, v) => bad_verb(verb, v),
        };
        let pad = width.saturating_sub(text.chars().count());
        if pad == 0 {
            out.push_str(&text);
        } else if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            let (sign, digits) = match text.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("", text.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&text);
        }
    }
    if next < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|v| format!("{}={}", go_type(v), arg_display(v)))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}
