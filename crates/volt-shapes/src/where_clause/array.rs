//! Postgres arrays: their text form (`array_in`/`array_out`), ordering, and the array
//! operators and functions, with Postgres's rules for bounds, dimensions and NULL elements.

use std::cmp::Ordering;

use super::value::Value;

/// Postgres's `MAXDIM`.
const MAX_DIMS: usize = 6;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Array {
    /// (lower bound, length) per dimension, outermost first; empty for the empty array.
    pub dims: Vec<(i64, usize)>,
    /// Elements in row-major order; None is a NULL element.
    pub items: Vec<Option<Value>>,
}

/// What `@>`, `<@` and `&&` ask of two arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Containment {
    Contains,
    ContainedBy,
    Overlaps,
}

impl Containment {
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Containment::Contains => "@>",
            Containment::ContainedBy => "<@",
            Containment::Overlaps => "&&",
        }
    }
}

fn malformed(input: &str) -> String {
    format!("malformed array literal: \"{input}\"")
}

/// `array_isspace`: the characters array input skips around elements.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
    input: &'a str,
    /// Length of each nesting level seen so far.
    lens: Vec<Option<usize>>,
    /// The depth scalar elements sit at, once one has been seen.
    leaf_depth: Option<usize>,
    items: Vec<Option<String>>,
}

impl Reader<'_> {
    fn err(&self) -> String {
        malformed(self.input)
    }

    fn skip_spaces(&mut self) {
        while self.s.get(self.i).copied().is_some_and(is_space) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn int(&mut self) -> Result<i64, String> {
        let start = self.i;
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.i += 1;
        }
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err())?;
        let v: i64 = text.parse().map_err(|_| self.err())?;
        if i32::try_from(v).is_err() {
            return Err(self.err());
        }
        Ok(v)
    }

    /// `[lb:ub][lb:ub]...=` before the braces.
    fn decoration(&mut self) -> Result<Vec<(i64, usize)>, String> {
        let mut dims = Vec::new();
        while self.peek() == Some(b'[') {
            self.i += 1;
            self.skip_spaces();
            let first = self.int()?;
            self.skip_spaces();
            let (lb, ub) = if self.peek() == Some(b':') {
                self.i += 1;
                self.skip_spaces();
                (first, self.int()?)
            } else {
                (1, first)
            };
            self.skip_spaces();
            if self.peek() != Some(b']') {
                return Err(self.err());
            }
            self.i += 1;
            if ub < lb {
                return Err("upper bound cannot be less than lower bound".into());
            }
            let len = usize::try_from(ub - lb + 1).map_err(|_| self.err())?;
            dims.push((lb, len));
            if dims.len() > MAX_DIMS {
                return Err(too_many_dims(dims.len()));
            }
            self.skip_spaces();
        }
        if !dims.is_empty() {
            if self.peek() != Some(b'=') {
                return Err(self.err());
            }
            self.i += 1;
        }
        Ok(dims)
    }

    /// One `{...}` level; the opening brace is already consumed.
    fn level(&mut self, depth: usize) -> Result<(), String> {
        if depth >= MAX_DIMS {
            return Err(too_many_dims(depth + 1));
        }
        let mut count = 0;
        self.skip_spaces();
        if self.peek() == Some(b'}') {
            self.i += 1;
            // `{}` is only valid as the whole array.
            return if depth == 0 { Ok(()) } else { Err(self.err()) };
        }
        loop {
            self.skip_spaces();
            if self.peek() == Some(b'{') {
                self.i += 1;
                if self.leaf_depth.is_some_and(|d| d <= depth) {
                    return Err(self.err());
                }
                self.level(depth + 1)?;
            } else {
                match self.leaf_depth {
                    Some(d) if d != depth => return Err(self.err()),
                    _ => self.leaf_depth = Some(depth),
                }
                let item = self.element()?;
                self.items.push(item);
            }
            count += 1;
            self.skip_spaces();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err()),
            }
        }
        if self.lens.len() <= depth {
            self.lens.resize(depth + 1, None);
        }
        match self.lens[depth] {
            None => self.lens[depth] = Some(count),
            Some(n) if n == count => {}
            Some(_) => {
                return Err(format!(
                    "{}: multidimensional arrays must have sub-arrays with matching dimensions",
                    self.err()
                ));
            }
        }
        Ok(())
    }

    /// A quoted or bare element; None for an unquoted NULL.
    fn element(&mut self) -> Result<Option<String>, String> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err(self.err()),
                    Some(b'"') => {
                        self.i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let escaped = self.s.get(self.i + 1).copied().ok_or_else(|| self.err())?;
                        out.push(escaped);
                        self.i += 2;
                    }
                    Some(b) => {
                        out.push(b);
                        self.i += 1;
                    }
                }
            }
            return String::from_utf8(out).map(Some).map_err(|_| self.err());
        }
        let mut escaped_any = false;
        // Trailing spaces are dropped unless escaped: remember where the kept text ends.
        let mut keep = 0;
        loop {
            match self.peek() {
                None | Some(b'{' | b'"') => return Err(self.err()),
                Some(b',' | b'}') => break,
                Some(b'\\') => {
                    let escaped = self.s.get(self.i + 1).copied().ok_or_else(|| self.err())?;
                    out.push(escaped);
                    keep = out.len();
                    escaped_any = true;
                    self.i += 2;
                }
                Some(b) => {
                    out.push(b);
                    if !is_space(b) {
                        keep = out.len();
                    }
                    self.i += 1;
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() && !escaped_any {
            return Err(self.err());
        }
        if !escaped_any && out.eq_ignore_ascii_case(b"NULL") {
            return Ok(None);
        }
        String::from_utf8(out).map(Some).map_err(|_| self.err())
    }
}

fn too_many_dims(n: usize) -> String {
    format!("number of array dimensions ({n}) exceeds the maximum allowed ({MAX_DIMS})")
}

/// `array_in`: `text` as Postgres prints or accepts an array, each element read by `elem`.
pub(crate) fn parse(
    input: &str,
    elem: impl Fn(&str) -> Result<Value, String>,
) -> Result<Array, String> {
    let mut r = Reader {
        s: input.as_bytes(),
        i: 0,
        input,
        lens: Vec::new(),
        leaf_depth: None,
        items: Vec::new(),
    };
    r.skip_spaces();
    let declared = r.decoration()?;
    r.skip_spaces();
    if r.peek() != Some(b'{') {
        return Err(format!(
            "{}: Array value must start with \"{{\" or dimension information.",
            r.err()
        ));
    }
    r.i += 1;
    r.level(0)?;
    r.skip_spaces();
    if r.i != r.s.len() {
        return Err(r.err());
    }
    let lens: Vec<usize> = r.lens.iter().map(|l| l.unwrap_or(0)).collect();
    let dims = if r.items.is_empty() {
        if !declared.is_empty() {
            return Err(r.err());
        }
        Vec::new()
    } else if declared.is_empty() {
        lens.iter().map(|&len| (1, len)).collect()
    } else {
        let matches =
            declared.len() == lens.len() && declared.iter().zip(&lens).all(|((_, a), b)| a == b);
        if !matches {
            return Err(format!(
                "{}: Specified array dimensions do not match array contents.",
                r.err()
            ));
        }
        declared
    };
    let items = r
        .items
        .iter()
        .map(|item| item.as_deref().map(&elem).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Array { dims, items })
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.bytes()
            .any(|b| matches!(b, b'"' | b'\\' | b'{' | b'}' | b',') || is_space(b))
}

/// `array_out`: elements printed by `elem`, quoted where array input would misread them.
pub(crate) fn format(arr: &Array, elem: impl Fn(&Value) -> String) -> String {
    let mut out = String::new();
    if arr.dims.iter().any(|(lb, _)| *lb != 1) {
        for (lb, len) in &arr.dims {
            out.push_str(&format!("[{lb}:{}]", lb + *len as i64 - 1));
        }
        out.push('=');
    }
    if arr.dims.is_empty() {
        out.push_str("{}");
        return out;
    }
    let mut items = arr.items.iter();
    write_level(&mut out, &arr.dims, &mut items, &elem);
    out
}

fn write_level<'a>(
    out: &mut String,
    dims: &[(i64, usize)],
    items: &mut impl Iterator<Item = &'a Option<Value>>,
    elem: &impl Fn(&Value) -> String,
) {
    let Some(((_, len), inner)) = dims.split_first() else {
        return;
    };
    out.push('{');
    for i in 0..*len {
        if i > 0 {
            out.push(',');
        }
        if !inner.is_empty() {
            write_level(out, inner, items, elem);
            continue;
        }
        match items.next() {
            Some(Some(v)) => {
                let s = elem(v);
                if needs_quotes(&s) {
                    out.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                } else {
                    out.push_str(&s);
                }
            }
            _ => out.push_str("NULL"),
        }
    }
    out.push('}');
}

/// `array_cmp`: elements in storage order (a NULL sorts after any value and equals another
/// NULL), then the element count, the number of dimensions, and the lengths and lower bounds.
/// It is also `array_eq`: equal exactly when the shapes and all elements are equal.
pub(crate) fn compare(
    a: &Array,
    b: &Array,
    elem: impl Fn(&Value, &Value) -> Option<Ordering>,
) -> Option<Ordering> {
    for (x, y) in a.items.iter().zip(&b.items) {
        let ord = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => elem(x, y)?,
        };
        if ord != Ordering::Equal {
            return Some(ord);
        }
    }
    let shape = a
        .items
        .len()
        .cmp(&b.items.len())
        .then(a.dims.len().cmp(&b.dims.len()));
    if shape != Ordering::Equal {
        return Some(shape);
    }
    for ((lb_a, len_a), (lb_b, len_b)) in a.dims.iter().zip(&b.dims) {
        let ord = len_a.cmp(len_b).then(lb_a.cmp(lb_b));
        if ord != Ordering::Equal {
            return Some(ord);
        }
    }
    Some(Ordering::Equal)
}

/// `array_contain_compare`: dimensions are ignored and a NULL element matches nothing, so an
/// array with a NULL is never contained in another.
pub(crate) fn containment(
    op: Containment,
    a: &Array,
    b: &Array,
    eq: impl Fn(&Value, &Value) -> Option<bool>,
) -> Option<bool> {
    let (needles, haystack, match_all) = match op {
        Containment::Contains => (b, a, true),
        Containment::ContainedBy => (a, b, true),
        Containment::Overlaps => (a, b, false),
    };
    for needle in &needles.items {
        let Some(needle) = needle else {
            if match_all {
                return Some(false);
            }
            continue;
        };
        let mut found = false;
        for hay in haystack.items.iter().flatten() {
            if eq(needle, hay)? {
                found = true;
                break;
            }
        }
        if found && !match_all {
            return Some(true);
        }
        if !found && match_all {
            return Some(false);
        }
    }
    Some(match_all)
}

fn incompatible(detail: &str) -> String {
    format!("cannot concatenate incompatible arrays: {detail}")
}

/// `array_cat`: along the first dimension, or one array as a new element of an array with
/// one more dimension.
pub(crate) fn cat(a: Array, b: Array) -> Result<Array, String> {
    if a.dims.is_empty() {
        return Ok(b);
    }
    if b.dims.is_empty() {
        return Ok(a);
    }
    let (na, nb) = (a.dims.len(), b.dims.len());
    let mut dims = if na == nb {
        if a.dims[1..] != b.dims[1..] {
            return Err(incompatible(
                "Arrays with differing element dimensions are not compatible for concatenation.",
            ));
        }
        let mut dims = a.dims.clone();
        dims[0].1 += b.dims[0].1;
        dims
    } else if na + 1 == nb {
        if a.dims[..] != b.dims[1..] {
            return Err(incompatible(
                "Arrays with differing dimensions are not compatible for concatenation.",
            ));
        }
        let mut dims = b.dims.clone();
        dims[0].1 += 1;
        dims
    } else if na == nb + 1 {
        if a.dims[1..] != b.dims[..] {
            return Err(incompatible(
                "Arrays with differing dimensions are not compatible for concatenation.",
            ));
        }
        let mut dims = a.dims.clone();
        dims[0].1 += 1;
        dims
    } else {
        return Err(incompatible(&format!(
            "Arrays of {na} and {nb} dimensions are not compatible for concatenation."
        )));
    };
    check_upper_bound(&mut dims)?;
    let mut items = a.items;
    items.extend(b.items);
    Ok(Array { dims, items })
}

fn check_upper_bound(dims: &mut [(i64, usize)]) -> Result<(), String> {
    match dims.first() {
        Some((lb, len)) if lb + *len as i64 - 1 > i64::from(i32::MAX) => {
            Err("integer out of range".into())
        }
        _ => Ok(()),
    }
}

/// `array_append` (`at_end`) and `array_prepend`: only on empty or one-dimensional arrays;
/// the lower bound stays where it was.
pub(crate) fn push(arr: Array, item: Option<Value>, at_end: bool) -> Result<Array, String> {
    if arr.dims.is_empty() {
        return Ok(Array {
            dims: vec![(1, 1)],
            items: vec![item],
        });
    }
    if arr.dims.len() != 1 {
        return Err("argument must be empty or one-dimensional array".into());
    }
    let mut dims = arr.dims;
    dims[0].1 += 1;
    check_upper_bound(&mut dims)?;
    let mut items = arr.items;
    if at_end {
        items.push(item);
    } else {
        items.insert(0, item);
    }
    Ok(Array { dims, items })
}

/// `array_ndims`: NULL for the empty array.
pub(crate) fn ndims(arr: &Array) -> Option<i64> {
    (!arr.dims.is_empty()).then_some(arr.dims.len() as i64)
}

/// `arr[i][j]...`: NULL unless there is one subscript per dimension and each is in bounds.
pub(crate) fn element(arr: &Array, subscripts: &[i64]) -> Option<Value> {
    if subscripts.len() != arr.dims.len() || subscripts.is_empty() {
        return None;
    }
    let mut offset = 0usize;
    for (&(lb, len), &sub) in arr.dims.iter().zip(subscripts) {
        let pos = usize::try_from(sub.checked_sub(lb)?).ok()?;
        if pos >= len {
            return None;
        }
        offset = offset * len + pos;
    }
    arr.items.get(offset).cloned().flatten()
}

/// `arr[a:b]...`: bounds default to the array's and are clipped to it; dimensions without a
/// subscript are taken whole; the result's lower bounds are 1, and it is empty when any range
/// is empty or there are more subscripts than dimensions.
pub(crate) fn slice(arr: &Array, bounds: &[(Option<i64>, Option<i64>)]) -> Array {
    let empty = Array {
        dims: Vec::new(),
        items: Vec::new(),
    };
    if arr.dims.is_empty() || bounds.len() > arr.dims.len() {
        return empty;
    }
    let mut ranges = Vec::with_capacity(arr.dims.len());
    for (i, &(lb, len)) in arr.dims.iter().enumerate() {
        let ub = lb + len as i64 - 1;
        let (lo, hi) = bounds.get(i).copied().unwrap_or((None, None));
        let lo = lo.map_or(lb, |l| l.max(lb));
        let hi = hi.map_or(ub, |h| h.min(ub));
        if lo > hi {
            return empty;
        }
        // Offsets into this dimension, now known to be in bounds.
        ranges.push(((lo - lb) as usize, (hi - lo + 1) as usize));
    }
    let mut items = Vec::new();
    collect_slice(arr, &ranges, 0, 0, &mut items);
    Array {
        dims: ranges.iter().map(|&(_, n)| (1, n)).collect(),
        items,
    }
}

fn collect_slice(
    arr: &Array,
    ranges: &[(usize, usize)],
    depth: usize,
    base: usize,
    out: &mut Vec<Option<Value>>,
) {
    let (Some(&(start, n)), Some(&(_, len))) = (ranges.get(depth), arr.dims.get(depth)) else {
        return;
    };
    for pos in start..start + n {
        let offset = base * len + pos;
        if depth + 1 == ranges.len() {
            out.push(arr.items.get(offset).cloned().flatten());
        } else {
            collect_slice(arr, ranges, depth + 1, offset, out);
        }
    }
}

/// `ARRAY[...]` of sub-arrays: they must all have the same dimensions; an empty sub-array
/// makes the whole result empty only if all are.
pub(crate) fn nest(subs: Vec<Array>) -> Result<Array, String> {
    let mismatch = || {
        "multidimensional arrays must have array expressions with matching dimensions".to_string()
    };
    let Some(first) = subs.first() else {
        return Ok(Array {
            dims: Vec::new(),
            items: Vec::new(),
        });
    };
    let inner: Vec<(i64, usize)> = first.dims.clone();
    if subs.iter().any(|s| s.dims != inner) {
        return Err(mismatch());
    }
    if inner.is_empty() {
        return Ok(Array {
            dims: Vec::new(),
            items: Vec::new(),
        });
    }
    if inner.len() + 1 > MAX_DIMS {
        return Err(too_many_dims(inner.len() + 1));
    }
    let mut dims = vec![(1, subs.len())];
    dims.extend(inner);
    let items = subs.into_iter().flat_map(|s| s.items).collect();
    Ok(Array { dims, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(input: &str) -> Result<Array, String> {
        parse(input, |s| Ok(Value::Text(s.to_string())))
    }

    fn show(arr: &Array) -> String {
        format(arr, |v| match v {
            Value::Text(s) => s.clone(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn array_text_round_trips_like_postgres() {
        for (input, want) in [
            ("{}", "{}"),
            ("{a,b}", "{a,b}"),
            (" { a b , \"c\" } ", "{\"a b\",c}"),
            ("{a\\ }", "{\"a \"}"),
            ("{nUll,\"null\"}", "{NULL,\"null\"}"),
            (
                "{\"c\\\"d\",\"e\\\\f\",\"\"}",
                "{\"c\\\"d\",\"e\\\\f\",\"\"}",
            ),
            ("{{1,2},{3,4}}", "{{1,2},{3,4}}"),
            ("[0:1]={x,y}", "[0:1]={x,y}"),
            ("[1:1][3:4]={{x,y}}", "[1:1][3:4]={{x,y}}"),
            ("{é,ü}", "{é,ü}"),
        ] {
            match text(input) {
                Ok(arr) => assert_eq!(show(&arr), want, "{input}"),
                Err(e) => panic!("{input}: {e}"),
            }
        }
    }

    #[test]
    fn malformed_arrays_are_rejected() {
        for input in [
            "",
            "{",
            "{a",
            "a",
            "{a,,b}",
            "{{},{}}",
            "{{1},{}}",
            "{{1},2}",
            "{1,{2}}",
            "{{1,2},{3}}",
            "[1:3]={1,2}",
            "{1} x",
            "{\"a}",
            "{a\"b}",
            "[2:1]={}",
            "{{{{{{{1}}}}}}}",
        ] {
            assert!(text(input).is_err(), "{input} parsed as {:?}", text(input));
        }
    }

    #[test]
    fn concatenation_follows_array_cat() {
        let cat_show = |a: &str, b: &str| match (text(a), text(b)) {
            (Ok(a), Ok(b)) => cat(a, b).map(|r| show(&r)),
            _ => Err("bad input".into()),
        };
        assert_eq!(
            cat_show("[5:6]={1,2}", "[2:3]={3,4}"),
            Ok("[5:8]={1,2,3,4}".into())
        );
        assert_eq!(cat_show("{1,2}", "{{3,4}}"), Ok("{{1,2},{3,4}}".into()));
        assert_eq!(cat_show("{{1,2}}", "{3,4}"), Ok("{{1,2},{3,4}}".into()));
        assert_eq!(cat_show("{}", "{3}"), Ok("{3}".into()));
        assert!(cat_show("{{1,2}}", "{{3}}").is_err());
        assert!(cat_show("{1}", "{{{3}}}").is_err());
    }

    #[test]
    fn subscripts_and_slices_follow_bounds() {
        let Ok(arr) = text("[5:6]={a,b}") else {
            panic!("parse")
        };
        assert_eq!(element(&arr, &[5]), Some(Value::Text("a".into())));
        assert_eq!(element(&arr, &[1]), None);
        assert_eq!(show(&slice(&arr, &[(None, Some(5))])), "{a}");
        let Ok(grid) = text("{{1,2},{3,4}}") else {
            panic!("parse")
        };
        assert_eq!(element(&grid, &[2]), None);
        assert_eq!(show(&slice(&grid, &[(Some(2), Some(2))])), "{{3,4}}");
        assert_eq!(
            show(&slice(&grid, &[(Some(1), Some(2)), (None, Some(2))])),
            "{{1,2},{3,4}}"
        );
        assert_eq!(show(&slice(&grid, &[(Some(3), Some(1))])), "{}");
        assert_eq!(
            show(&slice(&grid, &[(None, Some(1)), (Some(2), None)])),
            "{{2}}"
        );
    }
}
