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

/// Stacks as root-first frame paths (indices into a [`StackTree`]'s frames) with their
/// values, in one flat buffer: the input of [`StackTree::add_paths`].
#[derive(Debug, Clone, Default)]
pub struct FramePaths {
    frames: Vec<u32>,
    ends: Vec<usize>,
    values: Vec<i64>,
}

impl FramePaths {
    /// Appends frames (root first) to the path being built.
    pub fn extend_path(&mut self, root_first_frames: &[u32]) {
        self.frames.extend_from_slice(root_first_frames);
    }

    /// Ends the path being built (possibly empty: the stack then counts at the root)
    /// with its value.
    pub fn end_path(&mut self, value: i64) {
        self.ends.push(self.frames.len());
        self.values.push(value);
    }

    /// Number of ended paths.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no path has been ended.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn path(&self, index: usize) -> &[u32] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.frames[start..self.ends[index]]
    }
}

/// Every node's children of a [`StackTree`], in one buffer ([`StackTree::children`]).
#[derive(Debug, Clone)]
pub struct Children {
    /// Where each node's children start in `children`; one more entry than nodes.
    starts: Vec<usize>,
    children: Vec<u32>,
}

impl Children {
    /// The children of `node`, in frame order; empty for a node that is not in the tree.
    pub fn of(&self, node: u32) -> &[u32] {
        let node = node as usize;
        match (self.starts.get(node), self.starts.get(node + 1)) {
            (Some(start), Some(end)) => &self.children[*start..*end],
            _ => &[],
        }
    }
}

/// A merged stack tree. Node 0 is the root. Parents always precede their children.
#[derive(Debug, Clone)]
pub struct StackTree {
    frames: Vec<Frame>,
    frame_index: HashMap<Frame, u32>,
    nodes: Vec<TreeNode>,
    /// `(parent, frame) -> child` for the nodes before `indexed_nodes`; the rest are
    /// indexed when a lookup next needs them. Why lazily: [`Self::add_paths`] builds a
    /// whole tree without one lookup, and most trees are rendered and dropped without
    /// another stack ever being added.
    child_index: HashMap<(u32, u32), u32>,
    indexed_nodes: usize,
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
            indexed_nodes: 1,
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

    /// Brings the child index up to date with every node.
    fn index_children(&mut self) {
        for (index, node) in self.nodes.iter().enumerate().skip(self.indexed_nodes) {
            self.child_index.insert((node.parent, node.frame), index as u32);
        }
        self.indexed_nodes = self.nodes.len();
    }

    /// The child of `parent` for `frame`, added when new.
    fn child(&mut self, parent: u32, frame: u32) -> u32 {
        self.index_children();
        if let Some(child) = self.child_index.get(&(parent, frame)) {
            return *child;
        }
        let child = self.push_node(parent, frame);
        self.child_index.insert((parent, frame), child);
        self.indexed_nodes = self.nodes.len();
        child
    }

    /// Appends a node without indexing it; the caller knows `parent` has no child for
    /// `frame` yet.
    fn push_node(&mut self, parent: u32, frame: u32) -> u32 {
        let child = self.nodes.len() as u32;
        self.nodes.push(TreeNode {
            frame,
            parent,
            ..TreeNode::default()
        });
        child
    }

    /// Adds every path of `paths` with its value; the same tree as
    /// [`Self::add_stack`] per path, in less time.
    ///
    /// How: the paths are visited sorted, so each shares its longest common prefix with
    /// the one before it, whose nodes are still on hand. Below that prefix a node is
    /// looked up only under a parent that existed before this call: a parent added by
    /// this call has seen every path through it already (they sort together), so its
    /// children are all new. Building a tree from scratch therefore looks up nothing.
    pub fn add_paths(&mut self, paths: &FramePaths) {
        debug_assert!(paths
            .frames
            .iter()
            .all(|frame| (*frame as usize) < self.frames.len()));
        self.index_children();
        let existing_nodes = self.nodes.len();
        let mut order: Vec<usize> = (0..paths.len()).collect();
        order.sort_unstable_by(|left, right| paths.path(*left).cmp(paths.path(*right)));
        // chain[depth] is the node of the previous path's frame at that depth.
        let mut chain: Vec<u32> = Vec::with_capacity(64);
        let mut previous: &[u32] = &[];
        for index in order {
            let path = paths.path(index);
            let value = paths.values[index];
            let shared = previous
                .iter()
                .zip(path)
                .take_while(|(earlier, later)| earlier == later)
                .count();
            chain.truncate(shared);
            for frame in &path[shared..] {
                let parent = chain.last().copied().unwrap_or(0);
                let node = if (parent as usize) < existing_nodes {
                    match self.child_index.get(&(parent, *frame)) {
                        Some(child) => *child,
                        None => self.push_node(parent, *frame),
                    }
                } else {
                    self.push_node(parent, *frame)
                };
                chain.push(node);
            }
            self.nodes[0].total += value;
            for node in &chain {
                self.nodes[*node as usize].total += value;
            }
            self.nodes[chain.last().copied().unwrap_or(0) as usize].self_value += value;
            previous = path;
        }
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

    /// Every node's children, ordered by frame (function name, then file and binary), so
    /// that output does not depend on the order stacks were added in.
    pub fn children(&self) -> Children {
        // Ranking the distinct frames once makes each sibling comparison one of integers
        // instead of up to three of strings.
        let mut frames_in_order: Vec<u32> = (0..self.frames.len() as u32).collect();
        frames_in_order
            .sort_unstable_by(|left, right| self.frames[*left as usize].cmp(&self.frames[*right as usize]));
        let mut rank_of_frame = vec![0u32; self.frames.len()];
        for (rank, frame) in frames_in_order.iter().enumerate() {
            rank_of_frame[*frame as usize] = rank as u32;
        }
        let mut starts = vec![0usize; self.nodes.len() + 1];
        for node in self.nodes.iter().skip(1) {
            starts[node.parent as usize + 1] += 1;
        }
        for index in 1..starts.len() {
            starts[index] += starts[index - 1];
        }
        let mut next_slot = starts.clone();
        let mut children = vec![0u32; self.nodes.len().saturating_sub(1)];
        for (index, node) in self.nodes.iter().enumerate().skip(1) {
            let slot = &mut next_slot[node.parent as usize];
            children[*slot] = index as u32;
            *slot += 1;
        }
        for window in starts.windows(2) {
            children[window[0]..window[1]]
                .sort_unstable_by_key(|child| rank_of_frame[self.nodes[*child as usize].frame as usize]);
        }
        Children { starts, children }
    }

    /// Node indices in pre-order (root first, children in [`Self::children`] order).
    pub fn preorder(&self) -> Vec<u32> {
        let children = self.children();
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut pending = vec![0u32];
        while let Some(node) = pending.pop() {
            order.push(node);
            pending.extend(children.of(node).iter().rev());
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
        let mut pending: Vec<(u32, bool)> = children.of(0).iter().rev().map(|child| (*child, true)).collect();
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
            pending.extend(children.of(index).iter().rev().map(|child| (*child, true)));
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

    /// [`Self::truncated`], without a copy when nothing is to be cut (`min_fraction` of 0).
    pub fn into_truncated(self, min_fraction: f64) -> (StackTree, TruncationReport) {
        if min_fraction <= 0.0 {
            return (self, TruncationReport::default());
        }
        self.truncated(min_fraction)
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
    fn children_come_in_frame_order_whatever_the_insertion_order() {
        let mut tree = StackTree::new();
        let frame = |function: &str, binary: &str| Frame {
            function: function.into(),
            file: String::new(),
            binary: binary.into(),
        };
        let frames: Vec<u32> = [frame("b", ""), frame("a", "z"), frame("a", "y"), frame("c", "")]
            .iter()
            .map(|frame| tree.intern_frame(frame))
            .collect();
        for leaf in &frames {
            tree.add_stack(&[frames[3], *leaf], 1);
        }
        let children = tree.children();
        let root_children = children.of(0);
        assert_eq!(root_children.len(), 1);
        let names: Vec<(String, String)> = children
            .of(root_children[0])
            .iter()
            .map(|child| {
                let frame = &tree.frames()[tree.nodes()[*child as usize].frame as usize];
                (frame.function.clone(), frame.binary.clone())
            })
            .collect();
        let expected = [("a", "y"), ("a", "z"), ("b", ""), ("c", "")]
            .map(|(function, binary)| (function.to_string(), binary.to_string()));
        assert_eq!(names, expected);
        assert!(children.of(99).is_empty());
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

        #[test]
        fn paths_added_at_once_equal_stacks_added_one_by_one(
            before in arbitrary_stacks(), added in arbitrary_stacks()
        ) {
            let one_by_one = build(&before.iter().chain(&added).cloned().collect::<Vec<_>>());
            let mut at_once = build(&before);
            let mut paths = FramePaths::default();
            for (stack, value) in &added {
                let frames: Vec<u32> = names(stack)
                    .iter()
                    .map(|name| at_once.intern_frame(&Frame::named(name.clone())))
                    .collect();
                paths.extend_path(&frames);
                paths.end_path(*value);
            }
            at_once.add_paths(&paths);
            prop_assert_eq!(node_values(&at_once), node_values(&one_by_one));
            // Adding more afterwards finds the nodes add_paths made (no second child per frame).
            let mut both = at_once.clone();
            both.merge(&one_by_one);
            prop_assert_eq!(both.nodes().len(), at_once.nodes().len());
        }
    }

    /// Every node by its root-first path of function names, with (self, total); fails
    /// when two children of one parent share a frame.
    fn node_values(tree: &StackTree) -> BTreeMap<Vec<String>, (i64, i64)> {
        let mut values = BTreeMap::new();
        for (index, node) in tree.nodes().iter().enumerate() {
            let mut path = Vec::new();
            let mut cursor = index as u32;
            while cursor != 0 {
                let on_path = tree.nodes()[cursor as usize];
                path.push(tree.frames()[on_path.frame as usize].function.clone());
                cursor = on_path.parent;
            }
            path.reverse();
            let repeated = values.insert(path, (node.self_value, node.total));
            assert!(repeated.is_none(), "two nodes for one path");
        }
        values
    }
}
