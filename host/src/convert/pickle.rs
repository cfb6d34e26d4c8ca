//! A safe reader for the pickles inside PyTorch checkpoints (`data.pkl`).
//!
//! It never executes anything: it interprets only the opcodes that `torch.save` emits for
//! dicts, lists, tuples, numbers, strings and tensors, and resolves `GLOBAL`s against a fixed
//! allow-list (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`, the `torch.*Storage` classes and `torch.<dtype>`).
//! `REDUCE` may only call the allowed rebuild functions, which become plain data here
//! ([`Object::Tensor`] holds a storage reference, offset, shape and stride, no values).
//! Every other opcode or global is refused by name, e.g.
//! "pickle opcode GLOBAL os.system is not allowed".
//!
//! Objects live in an arena and the stack and memo hold indices, so a memoised container is
//! shared exactly as in Python, `BINGET` never copies, and memory stays proportional to the
//! pickle's length (each opcode adds at most one object). Nothing here recurses over objects,
//! so deep or self-referential input cannot overflow the stack.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::zip::printable;

/// Index of an object in [`Pickle::objects`].
pub type Id = usize;

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// `torch.DoubleStorage` / `torch.float64`.
    F64,
    /// `torch.FloatStorage` / `torch.float32`.
    F32,
    /// `torch.HalfStorage` / `torch.float16`.
    F16,
    /// `torch.BFloat16Storage` / `torch.bfloat16`.
    BF16,
    /// `torch.LongStorage` / `torch.int64`.
    I64,
    /// `torch.IntStorage` / `torch.int32`.
    I32,
    /// `torch.ShortStorage` / `torch.int16`.
    I16,
    /// `torch.CharStorage` / `torch.int8`.
    I8,
    /// `torch.ByteStorage` / `torch.uint8`.
    U8,
    /// `torch.BoolStorage` / `torch.bool`.
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// PyTorch's dtype name (`float32`).
    pub fn name(self) -> &'static str {
        ALLOWED_DTYPES
            .iter()
            .find(|(_, _, d)| *d == self)
            .map_or("?", |(_, dtype, _)| dtype)
    }

    /// PyTorch's legacy storage class name (`FloatStorage`).
    pub fn class_name(self) -> &'static str {
        ALLOWED_DTYPES
            .iter()
            .find(|(_, _, d)| *d == self)
            .map_or("?", |(class, _, _)| class)
    }
}

/// (storage class, dtype name, element type).
const ALLOWED_DTYPES: &[(&str, &str, StorageDtype)] = &[
    ("DoubleStorage", "float64", StorageDtype::F64),
    ("FloatStorage", "float32", StorageDtype::F32),
    ("HalfStorage", "float16", StorageDtype::F16),
    ("BFloat16Storage", "bfloat16", StorageDtype::BF16),
    ("LongStorage", "int64", StorageDtype::I64),
    ("IntStorage", "int32", StorageDtype::I32),
    ("ShortStorage", "int16", StorageDtype::I16),
    ("CharStorage", "int8", StorageDtype::I8),
    ("ByteStorage", "uint8", StorageDtype::U8),
    ("BoolStorage", "bool", StorageDtype::Bool),
];

/// A resolved, allowed global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.FloatStorage` etc.
    StorageClass(StorageDtype),
    /// `torch.float32` etc. (inert values).
    Dtype(StorageDtype),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", _) => ALLOWED_DTYPES.iter().find_map(|&(class, dtype, d)| {
            (name == class)
                .then_some(Global::StorageClass(d))
                .or((name == dtype).then_some(Global::Dtype(d)))
        }),
        _ => None,
    }
}

/// The allowed global `module.name`, or the error naming what was refused.
fn allowed_global(module: &str, name: &str, opcode: &str) -> Result<Global> {
    resolve_global(module, name).with_context(|| {
        format!(
            "pickle opcode {opcode} {}.{} is not allowed (a tensor checkpoint needs only \
             collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage; \
             nothing in the file is executed)",
            printable(module),
            printable(name)
        )
    })
}

/// A storage named by a persistent id: `data/<key>` of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: StorageDtype,
    /// The `data/<key>` entry name.
    pub key: String,
    /// Number of elements the pickle claims (checked against the file size).
    pub numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    /// The storage viewed.
    pub storage: StorageRef,
    /// First element, in storage elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in storage elements.
    pub stride: Vec<usize>,
}

impl TensorMeta {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view is the row-major layout of `shape`.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}

/// One unpickled object.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict or OrderedDict, items in insertion order (a repeated key appears twice; the
    /// last one wins, as in Python).
    Dict(Vec<(Id, Id)>),
    /// An allowed global.
    Global(Global),
    /// A storage (from a persistent id).
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorMeta),
}

impl Object {
    /// A short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "bool",
            Object::Int(_) => "int",
            Object::Float(_) => "float",
            Object::Str(_) => "str",
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict(_) => "dict",
            Object::Global(_) => "global",
            Object::Storage(_) => "storage",
            Object::Tensor(_) => "tensor",
        }
    }
}

/// An unpickled object graph.
#[derive(Debug)]
pub struct Pickle {
    objects: Vec<Object>,
    root: Id,
}

impl Pickle {
    /// The object `pickle.load` would return.
    pub fn root(&self) -> Id {
        self.root
    }

    /// An object by id (ids come from this pickle, so they are always valid).
    pub fn get(&self, id: Id) -> &Object {
        &self.objects[id]
    }

    /// The string value of `id`, if it is a string.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a dict whose keys are strings, last duplicate winning, in first-insertion
    /// order; `what` names the dict in errors.
    pub fn str_dict(&self, id: Id, what: &str) -> Result<Vec<(String, Id)>> {
        let Object::Dict(items) = self.get(id) else {
            bail!("{what} is a {}, not a dict", self.get(id).type_name());
        };
        let mut out: Vec<(String, Id)> = Vec::with_capacity(items.len());
        let mut index: HashMap<&str, usize> = HashMap::new();
        for &(k, v) in items {
            let Some(key) = self.str(k) else {
                bail!("{what} has a {} key", self.get(k).type_name());
            };
            match index.get(key) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(key, out.len());
                    out.push((key.to_string(), v));
                }
            }
        }
        Ok(out)
    }
}

/// Opcode names (pickle protocols 0–5), so refused opcodes are named in errors.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => return None,
    })
}

/// Limits taken from the container, so that no size in the pickle can make us allocate
/// more than the file could hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes available for storages (the checkpoint's size): a persistent id claiming more
    /// elements than this is refused.
    pub storage_bytes: usize,
}

/// Largest tensor rank accepted (torch allows 64; real weights have ≤ 5).
const MAX_DIMS: usize = 16;

/// One stack slot: a MARK or an object.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Obj(Id),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    objects: Vec<Object>,
    stack: Vec<Slot>,
    /// Stack positions of the open MARKs.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    limits: Limits,
}

/// Interprets `data` (a `data.pkl`); errors name the opcode and byte offset.
pub fn unpickle(data: &[u8], limits: Limits) -> Result<Pickle> {
    let mut m = Machine {
        data,
        pos: 0,
        objects: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        limits,
    };
    loop {
        let at = m.pos;
        let op = *data
            .get(at)
            .context("pickle ends without STOP (truncated data.pkl?)")?;
        m.pos += 1;
        let name = opcode_name(op);
        let result = m.step(op, name.unwrap_or("?"));
        match result {
            Ok(Some(root)) => {
                return Ok(Pickle {
                    objects: m.objects,
                    root,
                })
            }
            Ok(None) => {}
            Err(e) => {
                let name = match name {
                    Some(n) => n.to_string(),
                    None => format!("0x{op:02x}"),
                };
                return Err(e.context(format!("pickle opcode {name} at byte {at}")));
            }
        }
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.with_context(|| {
            format!(
                "needs {n} bytes but only {} remain (truncated data.pkl?)",
                self.data.len() - self.pos
            )
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("missing newline (truncated data.pkl?)")?;
        let s = std::str::from_utf8(&rest[..n]).context("not UTF-8")?;
        self.pos += n + 1;
        Ok(s.to_string())
    }

    fn text(&mut self, len: u64) -> Result<String> {
        let len = usize::try_from(len).context("string too long")?;
        let bytes = self.take(len)?;
        Ok(std::str::from_utf8(bytes)
            .context("string is not UTF-8")?
            .to_string())
    }

    fn new_obj(&mut self, o: Object) -> Id {
        self.objects.push(o);
        self.objects.len() - 1
    }

    fn push(&mut self, o: Object) {
        let id = self.new_obj(o);
        self.stack.push(Slot::Obj(id));
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            bail!("stack underflow");
        }
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            _ => bail!("stack underflow"),
        }
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            bail!("stack underflow");
        }
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => bail!("stack underflow"),
        }
    }

    /// Pops everything above the last MARK, and the MARK.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let at = self.marks.pop().context("no MARK on the stack")?;
        let items = self.stack.split_off(at);
        self.stack.pop(); // the Mark slot itself
        Ok(items
            .into_iter()
            .filter_map(|s| match s {
                Slot::Obj(id) => Some(id),
                Slot::Mark => None,
            })
            .collect())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>> {
        let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
        items.reverse();
        Ok(items)
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&key)
            .with_context(|| format!("memo entry {key} was never stored"))?;
        self.stack.push(Slot::Obj(id));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str, opcode: &str) -> Result<()> {
        let g = allowed_global(module, name, opcode)?;
        self.push(Object::Global(g));
        Ok(())
    }

    fn append(&mut self, list: Id, items: Vec<Id>) -> Result<()> {
        match &mut self.objects[list] {
            Object::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => bail!("cannot append to a {}", other.type_name()),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("odd number of items for a dict");
        }
        match &mut self.objects[dict] {
            Object::Dict(v) => {
                v.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            other => bail!("cannot set items of a {}", other.type_name()),
        }
    }

    /// One opcode; `Some(root)` at STOP.
    fn step(&mut self, op: u8, name: &str) -> Result<Option<Id>> {
        match op {
            0x80 => {
                let v = self.uint(1)?;
                if v > 5 {
                    bail!("pickle protocol {v} is not supported (0–5)");
                }
            }
            0x95 => {
                self.uint(8)?; // FRAME: a length hint only
            }
            b'.' => return Ok(Some(self.pop()?)),
            b'(' => {
                self.marks.push(self.stack.len() + 1);
                self.stack.push(Slot::Mark);
            }
            b'}' => self.push(Object::Dict(Vec::new())),
            b']' => self.push(Object::List(Vec::new())),
            b')' => self.push(Object::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Object::Tuple(items));
            }
            0x85..=0x87 => {
                let items = self.pop_n(usize::from(op - 0x84))?;
                self.push(Object::Tuple(items));
            }
            b'N' => self.push(Object::None),
            0x88 => self.push(Object::Bool(true)),
            0x89 => self.push(Object::Bool(false)),
            b'J' => {
                let v = self.uint(4)? as u32 as i32;
                self.push(Object::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.uint(1)?;
                self.push(Object::Int(v as i64));
            }
            b'M' => {
                let v = self.uint(2)?;
                self.push(Object::Int(v as i64));
            }
            0x8a => {
                let n = self.uint(1)? as usize;
                self.long(n)?;
            }
            0x8b => {
                let n = self.uint(4)?;
                self.long(usize::try_from(n).unwrap_or(usize::MAX))?;
            }
            b'G' => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push(Object::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                let n = self.uint(4)?;
                let s = self.text(n)?;
                self.push(Object::Str(s));
            }
            0x8c => {
                let n = self.uint(1)?;
                let s = self.text(n)?;
                self.push(Object::Str(s));
            }
            0x8d => {
                let n = self.uint(8)?;
                let s = self.text(n)?;
                self.push(Object::Str(s));
            }
            b'q' => {
                let k = self.uint(1)?;
                self.memo_put(k)?;
            }
            b'r' => {
                let k = self.uint(4)?;
                self.memo_put(k)?;
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?;
            }
            b'h' => {
                let k = self.uint(1)?;
                self.memo_get(k)?;
            }
            b'j' => {
                let k = self.uint(4)?;
                self.memo_get(k)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name, "GLOBAL")?;
            }
            0x93 => {
                let [m, n] = self.pop_n(2)?[..] else {
                    unreachable!("pop_n(2) returns two ids")
                };
                let g = match (&self.objects[m], &self.objects[n]) {
                    (Object::Str(m), Object::Str(n)) => allowed_global(m, n, "STACK_GLOBAL")?,
                    _ => bail!("module and name must be strings"),
                };
                self.push(Object::Global(g));
            }
            b'a' => {
                let item = self.pop()?;
                let list = self.top()?;
                self.append(list, vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.append(list, items)?;
            }
            b's' => {
                let kv = self.pop_n(2)?;
                let dict = self.top()?;
                self.set_items(dict, kv)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                self.set_items(dict, items)?;
            }
            b'b' => {
                let _state = self.pop()?;
                let target = self.top()?;
                // An OrderedDict's state (state_dict's `_metadata`) is ignored.
                if !matches!(self.objects[target], Object::Dict(_)) {
                    bail!(
                        "BUILD on a {} is not allowed",
                        self.objects[target].type_name()
                    );
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let storage = self.persistent_storage(pid)?;
                self.push(Object::Storage(storage));
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let obj = self.reduce(callable, args)?;
                self.push(obj);
            }
            _ => bail!("{name} is not supported (only the opcodes of tensor checkpoints are read)"),
        }
        Ok(None)
    }

    /// LONG1/LONG4: little-endian two's complement of n bytes, at most 8.
    fn long(&mut self, n: usize) -> Result<()> {
        if n > 8 {
            bail!("integer of {n} bytes is too large");
        }
        let b = self.take(n)?;
        let mut v = b.iter().rev().fold(0i64, |v, &x| (v << 8) | i64::from(x));
        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n);
        }
        self.push(Object::Int(v));
        Ok(())
    }

    /// `('storage', torch.FloatStorage, '<key>', '<location>', numel)`.
    fn persistent_storage(&self, pid: Id) -> Result<StorageRef> {
        let o = &self.objects;
        let Object::Tuple(t) = &o[pid] else {
            bail!("persistent id is a {}, not a tuple", o[pid].type_name());
        };
        let [tag, class, key, _location, numel] = t[..] else {
            bail!("persistent id has {} fields, expected 5", t.len());
        };
        if o[tag] != Object::Str("storage".into()) {
            bail!("persistent id is not a ('storage', …) tuple");
        }
        let dtype = match o[class] {
            Object::Global(Global::StorageClass(d)) => d,
            _ => bail!("persistent id names no torch storage class"),
        };
        let Object::Str(key) = &o[key] else {
            bail!("storage key is not a string");
        };
        let numel = match o[numel] {
            Object::Int(n) if n >= 0 => n as u64,
            _ => bail!("storage size is not a non-negative integer"),
        };
        let fits = numel
            .checked_mul(dtype.size() as u64)
            .is_some_and(|b| b <= self.limits.storage_bytes as u64);
        if !fits {
            bail!(
                "storage `{}` claims {numel} {} values, more than the {}-byte file can hold",
                printable(key),
                dtype.name(),
                self.limits.storage_bytes
            );
        }
        Ok(StorageRef {
            dtype,
            key: key.clone(),
            numel: numel as usize,
        })
    }

    fn reduce(&self, callable: Id, args: Id) -> Result<Object> {
        let o = &self.objects;
        let Object::Tuple(args) = &o[args] else {
            bail!("arguments are a {}, not a tuple", o[args].type_name());
        };
        let Object::Global(g) = o[callable] else {
            bail!("cannot call a {}", o[callable].type_name());
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Object::Dict(Vec::new())),
            Global::OrderedDict => bail!("OrderedDict(...) with arguments is not supported"),
            Global::RebuildTensorV2 => self.rebuild_tensor(args).map(Object::Tensor),
            Global::RebuildParameter => match args.first().map(|&t| &o[t]) {
                Some(t @ Object::Tensor(_)) => Ok(t.clone()),
                _ => bail!("_rebuild_parameter needs a tensor"),
            },
            Global::StorageClass(d) => bail!("calling torch.{} is not allowed", d.class_name()),
            Global::Dtype(d) => bail!("calling torch.{} is not allowed", d.name()),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`,
    /// checked: every element the view reaches lies inside the storage.
    fn rebuild_tensor(&self, args: &[Id]) -> Result<TensorMeta> {
        let o = &self.objects;
        if !(6..=7).contains(&args.len()) {
            bail!(
                "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                args.len()
            );
        }
        let Object::Storage(storage) = &o[args[0]] else {
            bail!(
                "_rebuild_tensor_v2: first argument is a {}, not a storage",
                o[args[0]].type_name()
            );
        };
        let offset = self.index(args[1], "storage offset")?;
        let shape = self.index_tuple(args[2], "size")?;
        let stride = self.index_tuple(args[3], "stride")?;
        if shape.len() != stride.len() {
            bail!("_rebuild_tensor_v2: size {shape:?} and stride {stride:?} differ in length");
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .context("tensor size overflows")?;
        // An expanded view (stride 0) may have more elements than its storage; it still may
        // not claim more than the whole file could hold.
        if numel > self.limits.storage_bytes.max(1) {
            bail!(
                "tensor of size {shape:?} claims {numel} values, more than the {}-byte file holds",
                self.limits.storage_bytes
            );
        }
        if numel > 0 {
            let last = shape.iter().zip(&stride).try_fold(offset, |acc, (&n, &s)| {
                (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
            });
            match last {
                Some(last) if last < storage.numel => {}
                _ => bail!(
                    "tensor view (offset {offset}, size {shape:?}, stride {stride:?}) reaches \
                     past its storage `{}` of {} values",
                    printable(&storage.key),
                    storage.numel
                ),
            }
        }
        Ok(TensorMeta {
            storage: storage.clone(),
            offset,
            shape,
            stride,
        })
    }

    fn index(&self, id: Id, what: &str) -> Result<usize> {
        match self.objects[id] {
            Object::Int(v) if v >= 0 => Ok(v as usize),
            ref other => bail!(
                "_rebuild_tensor_v2: {what} must be a non-negative int, got {}",
                other.type_name()
            ),
        }
    }

    fn index_tuple(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        let Object::Tuple(items) = &self.objects[id] else {
            bail!(
                "_rebuild_tensor_v2: {what} is a {}, not a tuple",
                self.objects[id].type_name()
            );
        };
        if items.len() > MAX_DIMS {
            bail!(
                "_rebuild_tensor_v2: {what} has {} dimensions (at most {MAX_DIMS})",
                items.len()
            );
        }
        items.iter().map(|&i| self.index(i, what)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        storage_bytes: 1 << 20,
    };

    fn err(data: &[u8]) -> String {
        format!("{:#}", unpickle(data, LIMITS).unwrap_err())
    }

    #[test]
    fn plain_values_and_memo_sharing() {
        // {'a': [1, -2, 3.5, True, None], 'b': <same list>} with protocol 2 opcodes.
        let mut p = vec![
            0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 1,
        ];
        p.extend_from_slice(&[b'(', b'K', 1, b'J', 0xFE, 0xFF, 0xFF, 0xFF, b'G']);
        p.extend_from_slice(&3.5f64.to_be_bytes());
        p.extend_from_slice(&[0x88, b'N', b'e', 0x8c, 1, b'b', b'h', 1, b'u', b'.']);
        let pk = unpickle(&p, LIMITS).unwrap();
        let d = pk.str_dict(pk.root(), "root").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1, d[1].1, "BINGET shares the memoised list");
        let Object::List(items) = pk.get(d[0].1) else {
            panic!()
        };
        let values: Vec<&Object> = items.iter().map(|&i| pk.get(i)).collect();
        assert_eq!(
            values,
            [
                &Object::Int(1),
                &Object::Int(-2),
                &Object::Float(3.5),
                &Object::Bool(true),
                &Object::None
            ]
        );
    }

    #[test]
    fn long1_is_twos_complement() {
        let pk = unpickle(&[0x8a, 2, 0x00, 0x80, b'.'], LIMITS).unwrap();
        assert_eq!(pk.get(pk.root()), &Object::Int(-32768));
        let pk = unpickle(&[0x8a, 1, 0x7f, b'.'], LIMITS).unwrap();
        assert_eq!(pk.get(pk.root()), &Object::Int(127));
    }

    #[test]
    fn forbidden_things_are_refused_by_name() {
        let e = err(b"\x80\x02cos\nsystem\n(X\x02\x00\x00\x00lstR.");
        assert!(
            e.contains("pickle opcode GLOBAL os.system is not allowed"),
            "{e}"
        );
        let e = err(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.");
        assert!(
            e.contains("STACK_GLOBAL builtins.eval is not allowed"),
            "{e}"
        );
        let e = err(b"(i__main__\nX\n.");
        assert!(
            e.contains("pickle opcode INST at byte 1: INST is not supported"),
            "{e}"
        );
        assert!(err(b"\xff").contains("pickle opcode 0xff at byte 0"));
        assert!(err(b"\x80\x02}").contains("ends without STOP"));
        assert!(err(b"X\xff\xff\xff\xffab").contains("only 2 remain"));
        assert!(err(b"a").contains("stack underflow"));
        assert!(
            err(b"(a.").contains("stack underflow"),
            "APPEND may not pop a MARK"
        );
        assert!(err(b"h\x05.").contains("memo entry 5 was never stored"));
        assert!(err(b"ctorch\nFloatStorage\n)R.").contains("calling torch.FloatStorage"));
        assert!(err(b"K\x01)b.").contains("BUILD on a int"));
    }

    fn tensor_pickle(numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p =
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage".to_vec();
        p.extend_from_slice(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
        p.extend_from_slice(&[b'K', numel, b't', b'Q', b'K', offset, b'(']);
        for s in size {
            p.extend_from_slice(&[b'K', *s]);
        }
        p.extend_from_slice(b"t(");
        for s in stride {
            p.extend_from_slice(&[b'K', *s]);
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR.");
        p
    }

    #[test]
    fn tensor_views_are_checked_against_their_storage() {
        let pk = unpickle(&tensor_pickle(6, 0, &[2, 3], &[3, 1]), LIMITS).unwrap();
        let Object::Tensor(t) = pk.get(pk.root()) else {
            panic!()
        };
        assert_eq!((t.numel(), t.is_contiguous()), (6, true));
        assert_eq!(t.storage.dtype, StorageDtype::F32);
        // Transposed view: fine, not contiguous.
        let pk = unpickle(&tensor_pickle(6, 0, &[3, 2], &[1, 3]), LIMITS).unwrap();
        let Object::Tensor(t) = pk.get(pk.root()) else {
            panic!()
        };
        assert!(!t.is_contiguous());
        let e = err(&tensor_pickle(6, 1, &[2, 3], &[3, 1]));
        assert!(
            e.contains("reaches past its storage `0` of 6 values"),
            "{e}"
        );
        let e = err(&tensor_pickle(6, 0, &[2, 3], &[3]));
        assert!(e.contains("differ in length"), "{e}");
        let small = Limits { storage_bytes: 16 };
        let e = format!(
            "{:#}",
            unpickle(&tensor_pickle(6, 0, &[6], &[1]), small).unwrap_err()
        );
        assert!(
            e.contains("claims 6 float32 values, more than the 16-byte file"),
            "{e}"
        );
    }
}
