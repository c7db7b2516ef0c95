//! Stack trees: the merge at the heart of every profile query.
//!
//! A [`StackTree`] is a prefix tree of stacks (root first) where every node carries the
//! value of the stacks ending there (`self`) and passing through it (`total`), plus the
//! same two numbers for a baseline selection in diff trees. [`StackTree::merge`] is
//! associative and commutative: groups merge locally, the coordinator merges the
//! partials, and the answer does not depend on the order. Truncation happens once, at
//! the end ([`StackTree::truncated`]) and reports what it cut.

use std::collections::HashMap;

/// A frame: one function in one binary. Trees and top tables group by this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Frame {
    /// Function name (demangled), or `0x<address>` when unsymbolized.
    pub function: String,
    /// Source file, may be empty.
    pub file: String,
    /// Binary or library (mapping file), may be empty.
    pub binary: String,
}

impl Frame {
    /// A frame known only by its function name.
    pub fn named(function: impl Into<String>) -> Self {
        Frame {
            function: function.into(),
            file: String::new(),
            binary: String::new(),
        }
    }
}

/// One node of a [`StackTree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeNode {
    /// Index into [`StackTree::frames`]; meaningless for the root.
    pub frame: u32,
    /// Parent node index; the root is its own parent (index 0).
    pub parent: u32,
    /// Value of stacks ending at this node.
    pub self_value: i64,
    /// Value of stacks passing through this node (self included).
    pub total: i64,
    /// Diff trees: `self_value` in the baseline.
    pub baseline_self: i64,
    /// Diff trees: `total` in the baseline.
    pub baseline_total: i64,
}

/// One row of a top table, `go tool pprof -top` semantics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// Index into [`StackTree::frames`].
    pub frame: u32,
    /// Value where the function is the leaf.
    pub flat: i64,
    /// Value of stacks containing the function, each stack counted once.
    pub cum: i64,
    /// Diff: flat in the baseline.
    pub baseline_flat: i64,
    /// Diff: cum in the baseline.
    pub baseline_cum: i64,
}

/// What truncation removed; never silently partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TruncationReport {
    /// Nodes folded into "other".
    pub nodes_removed: u64,
    /// Their total value.
    pub value_removed: i64,
}

/// Name of the synthetic node that holds what truncation cut below a parent.
pub const OTHER_FRAME_NAME: &str = "(other)";

/// Why a stack tree received from elsewhere was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A node refers to a frame or parent that does not exist, or is out of order.
    #[error("malformed stack tree: {0}")]
    Malformed(String),
}

/// A merged stack tree. Node 0 is the root. Parents always precede their children.
#[derive(Debug, Clone)]
pub struct StackTree {
    frames: Vec<Frame>,
    frame_index: HashMap<Frame, u32>,
    nodes: Vec<TreeNode>,
    child_index: HashMap<(u32, u32), u32>,
}

impl Default for StackTree {
    fn default() -> Self {
        Self::new()
    }
}

impl StackTree {
    /// An empty tree (just the root).
    pub fn new() -> Self {
        StackTree {
            frames: Vec::new(),
            frame_index: HashMap::new(),
            nodes: vec![TreeNode::default()],
            child_index: HashMap::new(),
        }
    }

    /// The frame table.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The nodes; index 0 is the root; parents precede children.
    pub fn nodes(&self) -> &[TreeNode] {
        &self.nodes
    }

    /// Sum of all stacks.
    pub fn total(&self) -> i64 {
        self.nodes[0].total
    }

    /// Sum of all baseline stacks (diff trees).
    pub fn baseline_total(&self) -> i64 {
        self.nodes[0].baseline_total
    }

    /// Returns the frame's index, adding it when new.
    pub fn intern_frame(&mut self, frame: &Frame) -> u32 {
        if let Some(index) = self.frame_index.get(frame) {
            return *index;
        }
        let index = self.frames.len() as u32;
        self.frames.push(frame.clone());
        self.frame_index.insert(frame.clone(), index);
        index
    }

    fn child(&mut self, parent: u32, frame: u32) -> u32 {
        if let Some(child) = self.child_index.get(&(parent, frame)) {
            return *child;
        }
        let child = self.nodes.len() as u32;
        self.nodes.push(TreeNode {
            frame,
            parent,
            ..TreeNode::default()
        });
        self.child_index.insert((parent, frame), child);
        child
    }

    /// Adds one stack (frame indices, root first) with its value.
    pub fn add_stack(&mut self, root_first_frames: &[u32], value: i64) {
        self.add_stack_values(root_first_frames, value, 0);
    }

    /// Adds one stack to the baseline values (diff trees).
    pub fn add_baseline_stack(&mut self, root_first_frames: &[u32], value: i64) {
        self.add_stack_values(root_first_frames, 0, value);
    }

    fn add_stack_values(&mut self, root_first_frames: &[u32], value: i64, baseline_value: i64) {
        debug_assert!(root_first_frames
            .iter()
            .all(|frame| (*frame as usize) < self.frames.len()));
        let mut node = 0u32;
        self.nodes[0].total += value;
        self.nodes[0].baseline_total += baseline_value;
        for frame in root_first_frames {
            node = self.child(node, *frame);
            let entry = &mut self.nodes[node as usize];
            entry.total += value;
            entry.baseline_total += baseline_value;
        }
        let leaf = &mut self.nodes[node as usize];
        leaf.self_value += value;
        leaf.baseline_self += baseline_value;
    }

    /// Adds every node of `other` into `self` (both value slots).
    pub fn merge(&mut self, other: &StackTree) {
        self.merge_mapped(other, false);
    }

    /// Adds `other`'s values into the baseline slots of `self` (to build a diff tree
    /// from the tree of selection A and the tree of selection B).
    pub fn merge_as_baseline(&mut self, other: &StackTree) {
        self.merge_mapped(other, true);
    }

    fn merge_mapped(&mut self, other: &StackTree, into_baseline: bool) {
        let frame_map: Vec<u32> = other
            .frames
            .iter()
            .map(|frame| self.intern_frame(frame))
            .collect();
        let mut node_map = vec![0u32; other.nodes.len()];
        for (index, other_node) in other.nodes.iter().enumerate() {
            let mapped = if index == 0 {
                0
            } else {
                debug_assert!((other_node.parent as usize) < index, "parents precede children");
                self.child(
                    node_map[other_node.parent as usize],
                    frame_map[other_node.frame as usize],
                )
            };
            node_map[index] = mapped;
            let node = &mut self.nodes[mapped as usize];
            if into_baseline {
                node.baseline_self += other_node.self_value;
                node.baseline_total += other_node.total;
            } else {
                node.self_value += other_node.self_value;
                node.total += other_node.total;
                node.baseline_self += other_node.baseline_self;
                node.baseline_total += other_node.baseline_total;
            }
        }
    }

    /// Children lists, ordered by function name then file and binary (stable output).
    pub fn children(&self) -> Vec<Vec<u32>> {
        let mut children = vec![Vec::new(); self.nodes.len()];
        for (index, node) in self.nodes.iter().enumerate().skip(1) {
            children[node.parent as usize].push(index as u32);
        }
        for list in &mut children {
            list.sort_by(|left, right| {
                self.frames[self.nodes[*left as usize].frame as usize]
                    .cmp(&self.frames[self.nodes[*right as usize].frame as usize])
            });
        }
        children
    }

    /// Node indices in pre-order (root first, children in [`Self::children`] order).
    pub fn preorder(&self) -> Vec<u32> {
        let children = self.children();
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut pending = vec![0u32];
        while let Some(node) = pending.pop() {
            order.push(node);
            pending.extend(children[node as usize].iter().rev());
        }
        order
    }

    /// Every stack with a non-zero self value, as root-first frame paths.
    pub fn stacks(&self) -> Vec<(Vec<u32>, i64, i64)> {
        let mut result = Vec::new();
        for index in self.preorder().into_iter().skip(1) {
            let node = self.nodes[index as usize];
            if node.self_value == 0 && node.baseline_self == 0 {
                continue;
            }
            let mut path = Vec::new();
            let mut cursor = index;
            while cursor != 0 {
                path.push(self.nodes[cursor as usize].frame);
                cursor = self.nodes[cursor as usize].parent;
            }
            path.reverse();
            result.push((path, node.self_value, node.baseline_self));
        }
        result
    }

    /// Folded text: `root;...;leaf value` per stack with a non-zero value, in
    /// pre-order. Frame names have `;` replaced so lines stay parseable.
    pub fn folded(&self) -> String {
        let mut text = String::new();
        for (path, value, _) in self.stacks() {
            if value == 0 {
                continue;
            }
            let names: Vec<String> = path
                .iter()
                .map(|frame| self.frames[*frame as usize].function.replace(';', ":"))
                .collect();
            text.push_str(&names.join(";"));
            text.push(' ');
            text.push_str(&value.to_string());
            text.push('\n');
        }
        text
    }

    /// Top table rows, by flat descending, then cum descending, then name.
    /// Rows group by function name (as `go tool pprof -top` does at function
    /// granularity); cum counts a function once per stack even under recursion.
    pub fn top(&self) -> Vec<TopEntry> {
        let mut row_of_name: HashMap<&str, usize> = HashMap::new();
        let mut rows: Vec<TopEntry> = Vec::new();
        let frame_rows: Vec<usize> = self
            .frames
            .iter()
            .enumerate()
            .map(|(index, frame)| {
                *row_of_name.entry(frame.function.as_str()).or_insert_with(|| {
                    rows.push(TopEntry {
                        frame: index as u32,
                        flat: 0,
                        cum: 0,
                        baseline_flat: 0,
                        baseline_cum: 0,
                    });
                    rows.len() - 1
                })
            })
            .collect();
        let children = self.children();
        let mut on_path = vec![0u32; rows.len()];
        // Iterative DFS: (node, entering?)
        let mut pending: Vec<(u32, bool)> = children[0].iter().rev().map(|child| (*child, true)).collect();
        while let Some((index, entering)) = pending.pop() {
            let node = self.nodes[index as usize];
            let row = frame_rows[node.frame as usize];
            if !entering {
                on_path[row] -= 1;
                continue;
            }
            let entry = &mut rows[row];
            entry.flat += node.self_value;
            entry.baseline_flat += node.baseline_self;
            if on_path[row] == 0 {
                entry.cum += node.total;
                entry.baseline_cum += node.baseline_total;
            }
            on_path[row] += 1;
            pending.push((index, false));
            pending.extend(children[index as usize].iter().rev().map(|child| (*child, true)));
        }
        rows.retain(|row| row.flat != 0 || row.cum != 0 || row.baseline_flat != 0 || row.baseline_cum != 0);
        rows.sort_by(|left, right| {
            right
                .flat
                .abs()
                .cmp(&left.flat.abs())
                .then(right.cum.abs().cmp(&left.cum.abs()))
                .then_with(|| {
                    self.frames[left.frame as usize]
                        .function
                        .cmp(&self.frames[right.frame as usize].function)
                })
        });
        rows
    }

    /// A copy without the nodes whose total (and baseline total) is below
    /// `min_fraction` of the root's; what they held goes to an `(other)` child of
    /// their parent, and the report says how much was cut.
    pub fn truncated(&self, min_fraction: f64) -> (StackTree, TruncationReport) {
        let mut report = TruncationReport::default();
        if min_fraction <= 0.0 {
            return (self.clone(), report);
        }
        let threshold =
            (self.total().abs().max(self.baseline_total().abs()) as f64 * min_fraction).ceil() as i64;
        let mut result = StackTree::new();
        result.nodes[0] = TreeNode {
            frame: 0,
            parent: 0,
            ..self.nodes[0]
        };
        let other_frame = result.intern_frame(&Frame::named(OTHER_FRAME_NAME));
        let mut node_map: Vec<Option<u32>> = vec![None; self.nodes.len()];
        node_map[0] = Some(0);
        for index in self.preorder().into_iter().skip(1) {
            let node = self.nodes[index as usize];
            let Some(parent) = node_map[node.parent as usize] else {
                continue; // an ancestor was cut; its totals were already counted
            };
            if node.total.abs() < threshold && node.baseline_total.abs() < threshold {
                let other = result.child(parent, other_frame);
                let entry = &mut result.nodes[other as usize];
                entry.self_value += node.total;
                entry.total += node.total;
                entry.baseline_self += node.baseline_total;
                entry.baseline_total += node.baseline_total;
                report.nodes_removed += self.subtree_size(index);
                report.value_removed += node.total;
                continue;
            }
            let frame = result.intern_frame(&self.frames[node.frame as usize]);
            let mapped = result.child(parent, frame);
            let entry = &mut result.nodes[mapped as usize];
            entry.self_value = node.self_value;
            entry.total = node.total;
            entry.baseline_self = node.baseline_self;
            entry.baseline_total = node.baseline_total;
            node_map[index as usize] = Some(mapped);
        }
        (result, report)
    }

    fn subtree_size(&self, root: u32) -> u64 {
        // Nodes are few compared to stacks; a linear scan with ancestry check is
        // simpler than keeping subtree sizes and runs once per cut node.
        let mut count = 0;
        for (index, _) in self.nodes.iter().enumerate() {
            let mut cursor = index as u32;
            loop {
                if cursor == root {
                    count += 1;
                    break;
                }
                if cursor == 0 {
                    break;
                }
                cursor = self.nodes[cursor as usize].parent;
            }
        }
        count
    }

    /// Rebuilds a tree from its parts (e.g. a tree received over the wire),
    /// checking that every reference is in range and parents precede children.
    pub fn from_parts(frames: Vec<Frame>, nodes: Vec<TreeNode>) -> Result<StackTree, TreeError> {
        let mut tree = StackTree::new();
        if nodes.is_empty() {
            return Ok(tree);
        }
        let frame_map: Vec<u32> = frames.iter().map(|frame| tree.intern_frame(frame)).collect();
        let mut node_map = vec![0u32; nodes.len()];
        for (index, node) in nodes.iter().enumerate() {
            let mapped = if index == 0 {
                0
            } else {
                if node.parent as usize >= index {
                    return Err(TreeError::Malformed(format!(
                        "node {index} precedes its parent {}",
                        node.parent
                    )));
                }
                let Some(frame) = frame_map.get(node.frame as usize) else {
                    return Err(TreeError::Malformed(format!(
                        "node {index} refers to frame {}",
                        node.frame
                    )));
                };
                tree.child(node_map[node.parent as usize], *frame)
            };
            node_map[index] = mapped;
            let entry = &mut tree.nodes[mapped as usize];
            entry.self_value += node.self_value;
            entry.total += node.total;
            entry.baseline_self += node.baseline_self;
            entry.baseline_total += node.baseline_total;
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn tree_of(stacks: &[(Vec<&str>, i64)]) -> StackTree {
        let mut tree = StackTree::new();
        for (names, value) in stacks {
            let frames: Vec<u32> = names
                .iter()
                .map(|name| tree.intern_frame(&Frame::named(*name)))
                .collect();
            tree.add_stack(&frames, *value);
        }
        tree
    }

    fn folded_map(tree: &StackTree) -> BTreeMap<String, i64> {
        tree.folded()
            .lines()
            .map(|line| {
                let (stack, value) = line.rsplit_once(' ').unwrap();
                (stack.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn top_counts_recursion_once_in_cum() {
        let tree = tree_of(&[(vec!["main", "f", "f", "g"], 3), (vec!["main", "f"], 2)]);
        let top = tree.top();
        let by_name: HashMap<&str, (i64, i64)> = top
            .iter()
            .map(|row| {
                (
                    tree.frames()[row.frame as usize].function.as_str(),
                    (row.flat, row.cum),
                )
            })
            .collect();
        assert_eq!(by_name["f"], (2, 5));
        assert_eq!(by_name["g"], (3, 3));
        assert_eq!(by_name["main"], (0, 5));
    }

    #[test]
    fn truncation_reports_what_it_cut() {
        let tree = tree_of(&[(vec!["a", "b"], 98), (vec!["a", "c"], 1), (vec!["d"], 1)]);
        let (truncated, report) = tree.truncated(0.05);
        assert_eq!(truncated.total(), 100);
        assert_eq!(report.nodes_removed, 2);
        assert_eq!(report.value_removed, 2);
        let folded = folded_map(&truncated);
        assert_eq!(folded["a;b"], 98);
        assert_eq!(folded["a;(other)"], 1);
        assert_eq!(folded["(other)"], 1);
    }

    #[test]
    fn from_parts_rejects_dangling_references() {
        let nodes = vec![
            TreeNode::default(),
            TreeNode {
                frame: 3,
                parent: 0,
                ..TreeNode::default()
            },
        ];
        assert!(StackTree::from_parts(vec![Frame::named("x")], nodes).is_err());
    }

    fn arbitrary_stacks() -> impl Strategy<Value = Vec<(Vec<u8>, i64)>> {
        prop::collection::vec((prop::collection::vec(0u8..6, 0..8), 1i64..1000), 0..60)
    }

    fn names(stack: &[u8]) -> Vec<String> {
        stack.iter().map(|frame| format!("fn{frame}")).collect()
    }

    fn build(stacks: &[(Vec<u8>, i64)]) -> StackTree {
        let mut tree = StackTree::new();
        for (stack, value) in stacks {
            let frames: Vec<u32> = names(stack)
                .iter()
                .map(|name| tree.intern_frame(&Frame::named(name.clone())))
                .collect();
            tree.add_stack(&frames, *value);
        }
        tree
    }

    proptest! {
        #[test]
        fn merge_is_order_independent_and_equals_naive_sum(
            first in arbitrary_stacks(), second in arbitrary_stacks(), third in arbitrary_stacks()
        ) {
            let mut naive: BTreeMap<String, i64> = BTreeMap::new();
            for (stack, value) in first.iter().chain(&second).chain(&third) {
                if stack.is_empty() { continue; }
                *naive.entry(names(stack).join(";")).or_default() += value;
            }
            let (a, b, c) = (build(&first), build(&second), build(&third));
            let mut left = a.clone();
            left.merge(&b);
            left.merge(&c);
            let mut right = c.clone();
            let mut inner = b.clone();
            inner.merge(&a);
            right.merge(&inner);
            prop_assert_eq!(folded_map(&left), naive.clone());
            prop_assert_eq!(folded_map(&right), naive);
            prop_assert_eq!(left.total(), right.total());
        }
    }
}
