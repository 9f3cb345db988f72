//! The data model in Redis: key names, the transaction entry format, the Lua scripts that change
//! several keys in one atomic step, and the reading of replies (see the layout in the module
//! documentation of [`super`]).
//!
//! Every reply is taken as a [`redis::Value`] and read here, so that a reply of an unexpected shape
//! is a [`StoreError::Corrupt`] naming what was read, never a panic, and never mistaken for a broken
//! connection.

use std::sync::LazyLock;

use redis::{Script, Value};
use uuid::Uuid;

use crate::store::{Collection, StoreError, StoreResult};
use crate::transaction::Status;

/// The names of every key and channel of one store: each starts with the prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(super) fn document(&self, collection: Collection) -> String {
        self.key(&format!("doc:{}", collection.name()))
    }

    pub(super) fn generation(&self) -> String {
        self.key("generation")
    }

    /// The pub/sub channel of generation changes (a channel, not a key).
    pub(super) fn changes(&self) -> String {
        self.key("changes")
    }

    pub(super) fn state(&self) -> String {
        self.key("state")
    }

    pub(super) fn blob(&self, digest: &str) -> String {
        self.key(&format!("blob:{digest}"))
    }

    /// A plugin key-value entry: the namespace's length keeps `a` + `b:c` apart from `a:b` + `c`.
    pub(super) fn kv(&self, namespace: &str, key: &str) -> Vec<u8> {
        let head = format!("{}kv:{}:", self.prefix, namespace.len());
        let mut out = Vec::with_capacity(head.len() + namespace.len() + 1 + key.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(namespace.as_bytes());
        out.push(b':');
        out.extend_from_slice(key.as_bytes());
        out
    }

    pub(super) fn instances(&self) -> String {
        self.key("instances")
    }

    /// Written before `WAITAOF`, which waits for the fsync of its own connection's writes.
    pub(super) fn sync_marker(&self) -> String {
        self.key("sync")
    }

    /// The hash of transaction entries.
    pub(super) fn tx(&self) -> String {
        self.key("tx")
    }

    /// Where `put_transactions` parks, for the length of its transaction, stored entries that a
    /// batch must not replace (a later stage than the batch's).
    pub(super) fn tx_keep(&self) -> String {
        self.key("tx:keep")
    }

    pub(super) fn tx_all(&self) -> String {
        self.key("tx:all")
    }

    pub(super) fn tx_status(&self, status: Status) -> String {
        self.key(&format!("tx:s:{}", status.code()))
    }

    pub(super) fn tx_channel(&self, channel: &str) -> String {
        self.key(&format!("tx:c:{channel}"))
    }

    pub(super) fn tx_channel_status(&self, channel: &str, status: Status) -> String {
        self.key(&format!("tx:cs:{}:{channel}", status.code()))
    }

    pub(super) fn tx_lock(&self, id: &str) -> String {
        self.key(&format!("tx:lock:{id}"))
    }
}

/// An id as index members and hash fields hold it: 32 lowercase hex digits, so that lexicographic
/// order is id order (and, for UUIDv7, time order).
pub(super) fn hex(id: Uuid) -> String {
    format!("{:032x}", id.as_u128())
}

pub(super) fn parse_hex(text: &[u8]) -> StoreResult<Uuid> {
    std::str::from_utf8(text)
        .ok()
        .filter(|t| t.len() == 32)
        .and_then(|t| u128::from_str_radix(t, 16).ok())
        .map(Uuid::from_u128)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a transaction index holds {:?}, which is not an id",
                String::from_utf8_lossy(text)
            ))
        })
}

/// A lexicographic range bound: `[id` (inclusive) or `(id` (exclusive).
pub(super) fn bound(inclusive: bool, id: Uuid) -> String {
    format!("{}{}", if inclusive { '[' } else { '(' }, hex(id))
}

// ----- transaction entries -----

/// The bytes before the channel id in an entry: stage, status, channel id length.
const ENTRY_HEAD: usize = 4;

/// A transaction's entry: `[stage u8][status u8][channel id length u16, big-endian][channel id]
/// [record]`. The head is what the scripts need for the stage rule and the indexes.
pub(super) fn encode_entry(
    stage: u8,
    status: Status,
    channel: &str,
    record: &[u8],
) -> StoreResult<Vec<u8>> {
    let len = u16::try_from(channel.len()).map_err(|_| {
        StoreError::Backend(format!(
            "a channel id of {} bytes is longer than a transaction entry holds (65,535)",
            channel.len()
        ))
    })?;
    let mut out = Vec::with_capacity(ENTRY_HEAD + channel.len() + record.len());
    out.push(stage);
    out.push(status.code());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(record);
    Ok(out)
}

/// The head of an encoded entry: stage, status, channel length and channel (what
/// [`DECIDE_TRANSACTIONS`] and the indexes go by).
pub(super) fn entry_head(entry: &[u8]) -> &[u8] {
    let channel = entry
        .get(2..4)
        .map_or(0, |len| usize::from(u16::from_be_bytes([len[0], len[1]])));
    &entry[..(ENTRY_HEAD + channel).min(entry.len())]
}

/// A stored entry, split.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry<'a> {
    pub(super) stage: u8,
    pub(super) status: Status,
    pub(super) channel: &'a [u8],
    /// [`crate::transaction::Transaction::encode`] of the record.
    pub(super) record: &'a [u8],
}

pub(super) fn read_entry(id: Uuid, bytes: &[u8]) -> StoreResult<Entry<'_>> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("transaction {id}: {why}"));
    let Some((head, rest)) = bytes.split_first_chunk::<ENTRY_HEAD>() else {
        return Err(corrupt(&format!(
            "its entry of {} bytes is shorter than its head",
            bytes.len()
        )));
    };
    let status =
        Status::from_code(head[1]).ok_or_else(|| corrupt(&format!("status code {}", head[1])))?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if rest.len() < len {
        return Err(corrupt("its entry ends inside its channel id"));
    }
    let (channel, record) = rest.split_at(len);
    Ok(Entry {
        stage: head[0],
        status,
        channel,
        record,
    })
}

// ----- replies -----

/// A string reply (`None` for nil).
pub(super) fn bulk(value: Value, what: &str) -> StoreResult<Option<Vec<u8>>> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        Value::SimpleString(text) => Ok(Some(text.into_bytes())),
        Value::Okay => Ok(Some(b"OK".to_vec())),
        Value::VerbatimString { text, .. } => Ok(Some(text.into_bytes())),
        other => Err(unexpected(what, &other)),
    }
}

/// An integer reply (Redis sends some integers as strings).
pub(super) fn int(value: Value, what: &str) -> StoreResult<i64> {
    match value {
        Value::Int(n) => Ok(n),
        Value::BulkString(ref bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| unexpected(what, &value)),
        other => Err(unexpected(what, &other)),
    }
}

/// A non-negative integer kept as a string (the generation), 0 when absent.
pub(super) fn counter(value: Value, what: &str) -> StoreResult<u64> {
    match bulk(value, what)? {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "{what}: {:?} is not a count",
                    String::from_utf8_lossy(&bytes)
                ))
            }),
    }
}

/// An array reply (nil reads as empty).
pub(super) fn array(value: Value, what: &str) -> StoreResult<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(what, &other)),
    }
}

/// An array of `(id, entry)` pairs, as the listing scripts return them.
pub(super) fn pairs(value: Value, what: &str) -> StoreResult<Vec<(Uuid, Vec<u8>)>> {
    let items = array(value, what)?;
    if !items.len().is_multiple_of(2) {
        return Err(StoreError::Corrupt(format!(
            "{what}: an odd number ({}) of ids and entries",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(id), Some(entry)) = (items.next(), items.next()) {
        let id = bulk(id, what)?.ok_or_else(|| unexpected(what, &Value::Nil))?;
        let id = parse_hex(&id)?;
        let entry = bulk(entry, what)?
            .ok_or_else(|| StoreError::Corrupt(format!("{what}: transaction {id} has no entry")))?;
        out.push((id, entry));
    }
    Ok(out)
}

pub(super) fn unexpected(what: &str, value: &Value) -> StoreError {
    // Only the shape: a reply may hold a record, which is no business of a log line.
    let shape = match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a status",
        Value::Okay => "OK",
        Value::Map(_) => "a map",
        Value::Set(_) => "a set",
        Value::Double(_) => "a double",
        Value::Boolean(_) => "a boolean",
        Value::ServerError(_) => "an error",
        _ => "an unexpected kind of reply",
    };
    StoreError::Corrupt(format!("{what}: Redis answered with {shape}"))
}

// ----- scripts -----

/// Shared by the transaction scripts. `ARGV[1]` is the key prefix and `KEYS[1]` the hash of
/// entries. An entry is readable when its head and channel id are complete; an unreadable one
/// (corruption) is overwritten or deleted, and since its channel is unknown only its status index
/// entries can be cleaned up.
const TX_LIB: &str = r#"
local p = ARGV[1]
local function readable(e)
  return e and #e >= 4 and #e >= 4 + string.byte(e, 3) * 256 + string.byte(e, 4)
end
local function head(e)
  return string.sub(e, 1, 4 + string.byte(e, 3) * 256 + string.byte(e, 4))
end
local function channel_of(e)
  return string.sub(e, 5, 4 + string.byte(e, 3) * 256 + string.byte(e, 4))
end
local function forget_statuses(id)
  for s = 0, 5 do redis.call('ZREM', p .. 'tx:s:' .. s, id) end
end
local function index_add(id, e)
  local s, c = string.byte(e, 2), channel_of(e)
  redis.call('HSET', p .. 'tx:head', id, head(e))
  redis.call('ZADD', p .. 'tx:all', 0, id)
  redis.call('ZADD', p .. 'tx:s:' .. s, 0, id)
  redis.call('ZADD', p .. 'tx:c:' .. c, 0, id)
  redis.call('ZADD', p .. 'tx:cs:' .. s .. ':' .. c, 0, id)
end
local function index_remove(id, e)
  redis.call('ZREM', p .. 'tx:all', id)
  redis.call('HDEL', p .. 'tx:head', id)
  if readable(e) then
    local s, c = string.byte(e, 2), channel_of(e)
    redis.call('ZREM', p .. 'tx:s:' .. s, id)
    redis.call('ZREM', p .. 'tx:c:' .. c, id)
    redis.call('ZREM', p .. 'tx:cs:' .. s .. ':' .. c, id)
  else
    forget_statuses(id)
  end
end
local function store(id, old, new)
  redis.call('HSET', KEYS[1], id, new)
  if readable(old) then
    if string.byte(old, 2) == string.byte(new, 2) and channel_of(old) == channel_of(new) then
      redis.call('HSET', p .. 'tx:head', id, head(new))
      return
    end
    index_remove(id, old)
  elseif old then
    forget_statuses(id)
  end
  index_add(id, new)
end
"#;

fn tx_script(body: &str) -> Script {
    Script::new(&format!("{TX_LIB}{body}"))
}

/// `put_transactions`, first of its three steps, which go to Redis as one `MULTI`/`EXEC` (atomic,
/// one round trip; the scripts go as `EVAL`, not `EVALSHA`, since inside `EXEC` a script Redis has
/// forgotten would fail alone while the steps around it ran): KEYS = entries, kept entries; ARGV = prefix, then id and head pairs (a head is
/// an entry's stage, status and channel; see [`entry_head`]). Decides from the stored heads: a
/// record whose stored stage is later than the batch's keeps its entry (copied to the kept hash,
/// for [`RESTORE_KEPT`]); every other one takes the batch's head and index entries. Returns how
/// many records take the batch's entry.
///
/// The entries themselves never pass through Lua: step two is a plain `HSET` of every entry of
/// the batch, and step three puts back the kept ones. Handing kilobytes of records to a script
/// costs the server several times what storing them does; heads are a few dozen bytes. Index
/// changes go as one `ZADD` (or `ZREM`) per index key for the whole batch, not one per record.
pub(super) static DECIDE_TRANSACTIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{TX_LIB}{}",
        r#"
local ids, heads = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  heads[#heads + 1] = ARGV[i + 1]
end
local olds = {}
for from = 1, #ids, 4000 do
  local got = redis.call('HMGET', p .. 'tx:head', unpack(ids, from, math.min(from + 3999, #ids)))
  for j = 1, #got do olds[from + j - 1] = got[j] end
end
local newheads, adds, removes = {}, {}, {}
local function push(map, key, id)
  local list = map[key]
  if not list then list = {}; map[key] = list end
  list[#list + 1] = id
end
local function index_keys(h)
  local s, c = string.byte(h, 2), channel_of(h)
  return {p .. 'tx:s:' .. s, p .. 'tx:c:' .. c, p .. 'tx:cs:' .. s .. ':' .. c}
end
local taken = 0
for n = 1, #ids do
  local id, new, old = ids[n], heads[n], olds[n]
  if readable(old) and string.byte(old, 1) > string.byte(new, 1) then
    local kept = redis.call('HGET', KEYS[1], id)
    if kept then redis.call('HSET', KEYS[2], id, kept) end
  else
    taken = taken + 1
    if old ~= new then
      newheads[#newheads + 1] = id
      newheads[#newheads + 1] = new
      local now = index_keys(new)
      if readable(old) then
        local before = index_keys(old)
        for k = 1, 3 do
          if before[k] ~= now[k] then
            push(removes, before[k], id)
            push(adds, now[k], id)
          end
        end
      else
        if old then forget_statuses(id) end
        push(adds, p .. 'tx:all', id)
        for k = 1, 3 do push(adds, now[k], id) end
      end
    end
  end
end
for from = 1, #newheads, 4000 do
  redis.call('HSET', p .. 'tx:head', unpack(newheads, from, math.min(from + 3999, #newheads)))
end
for key, list in pairs(removes) do
  for from = 1, #list, 4000 do
    redis.call('ZREM', key, unpack(list, from, math.min(from + 3999, #list)))
  end
end
for key, list in pairs(adds) do
  for from = 1, #list, 2000 do
    local args = {}
    for j = from, math.min(from + 1999, #list) do
      args[#args + 1] = '0'
      args[#args + 1] = list[j]
    end
    redis.call('ZADD', key, unpack(args))
  end
end
return taken
"#
    )
});

/// `put_transactions`, third step: KEYS = entries, kept entries. Puts back the entries step one
/// kept from being replaced, and empties the kept hash. Returns how many.
pub(super) const RESTORE_KEPT: &str = r#"
local kept = redis.call('HGETALL', KEYS[2])
if #kept == 0 then return 0 end
for from = 1, #kept, 4000 do
  redis.call('HSET', KEYS[1], unpack(kept, from, math.min(from + 3999, #kept)))
end
redis.call('DEL', KEYS[2])
return #kept / 2
"#;

/// `modify_transaction`, first step: KEYS = entries, lock; ARGV = id, token, lock lifetime (ms).
/// Takes the record's lock and reads its entry: `{1, entry}`, `{0}` when there is no such record,
/// `{2}` when another caller holds the lock.
pub(super) static LOCK_AND_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {2} end
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then
  redis.call('DEL', KEYS[2])
  return {0}
end
return {1, e}
"#,
    )
});

/// `modify_transaction`, second step: KEYS = entries, lock; ARGV = prefix, id, token, the entry
/// read, the new entry. Releases the lock and writes the new entry if the stored one is still the
/// one read. Returns 1 when written; 0 when a later write replaced (or a deletion removed) the
/// record meanwhile; 2 when the lock was lost (it expired: the caller took too long).
pub(super) static WRITE_AND_UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    tx_script(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 2 end
redis.call('DEL', KEYS[2])
local old = redis.call('HGET', KEYS[1], ARGV[2])
if old ~= ARGV[4] then return 0 end
store(ARGV[2], old, ARGV[5])
return 1
"#,
    )
});

/// Releases a record's lock if it is still `ARGV[1]`'s (after a failed change).
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// `cull_bodies`' write: ARGV = prefix, then triples of id, the entry read, the entry without
/// bodies. Writes each whose stored entry is still the one read and which no change holds locked;
/// returns the ids of the others.
pub(super) static WRITE_CULLED: LazyLock<Script> = LazyLock::new(|| {
    tx_script(
        r#"
local busy = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local old = redis.call('HGET', KEYS[1], id)
  if old ~= ARGV[i + 1] or redis.call('EXISTS', p .. 'tx:lock:' .. id) == 1 then
    busy[#busy + 1] = id
  else
    store(id, old, ARGV[i + 2])
  end
end
return busy
"#,
    )
});

/// `delete_transactions`: ARGV = prefix, the exclusive upper bound (`(id`), the most to delete.
/// Deletes the oldest records below the bound with every index entry; returns how many.
pub(super) static DELETE_TRANSACTIONS: LazyLock<Script> = LazyLock::new(|| {
    tx_script(
        r#"
local ids = redis.call('ZRANGEBYLEX', p .. 'tx:all', '-', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  index_remove(id, redis.call('HGET', KEYS[1], id))
  redis.call('HDEL', KEYS[1], id)
end
return #ids
"#,
    )
});

/// Oldest first: KEYS = entries, one index; ARGV = lower bound, upper bound, the most to return.
/// Returns id and entry pairs.
pub(super) static RANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local e = redis.call('HGET', KEYS[1], id)
  if e then
    out[#out + 1] = id
    out[#out + 1] = e
  end
end
return out
"#,
    )
});

/// Newest first: KEYS = entries, then one or more indexes; ARGV = upper bound, lower bound, how
/// many to skip, how many to return. Several indexes (one per status asked for) are merged in id
/// order, each read a chunk at a time, so the cost follows what is skipped and returned, not the
/// size of the indexes. Returns id and entry pairs.
pub(super) static PAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local hi, lo = ARGV[1], ARGV[2]
local skip, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local function add(id)
  local e = redis.call('HGET', KEYS[1], id)
  if not e then return false end
  out[#out + 1] = id
  out[#out + 1] = e
  return true
end
if #KEYS == 2 then
  for _, id in ipairs(redis.call('ZREVRANGEBYLEX', KEYS[2], hi, lo, 'LIMIT', skip, count)) do
    add(id)
  end
  return out
end
local CHUNK = 256
local buf, pos, from, ended = {}, {}, {}, {}
local function refill(i)
  buf[i] = redis.call('ZREVRANGEBYLEX', KEYS[i + 1], from[i], lo, 'LIMIT', 0, CHUNK)
  pos[i] = 1
  ended[i] = #buf[i] < CHUNK
  if #buf[i] > 0 then from[i] = '(' .. buf[i][#buf[i]] end
end
-- Lua compares strings by the locale: ids are compared as numbers, 8 hex digits at a time.
local function newer(a, b)
  for k = 1, 25, 8 do
    local x, y = tonumber(string.sub(a, k, k + 7), 16), tonumber(string.sub(b, k, k + 7), 16)
    if x ~= y then return x > y end
  end
  return false
end
for i = 1, #KEYS - 1 do
  from[i] = hi
  refill(i)
end
local taken, last = 0, nil
while taken < count do
  local best = nil
  for i = 1, #KEYS - 1 do
    if pos[i] > #buf[i] and not ended[i] then refill(i) end
    local id = buf[i][pos[i]]
    if id and (best == nil or newer(id, buf[best][pos[best]])) then best = i end
  end
  if best == nil then break end
  local id = buf[best][pos[best]]
  pos[best] = pos[best] + 1
  if id ~= last then
    last = id
    if skip > 0 then
      skip = skip - 1
    elseif add(id) then
      taken = taken + 1
    end
  end
end
return out
"#,
    )
});

/// `put` of a document: KEYS = the collection's hash, the generation; ARGV = id, JSON, the change
/// channel. Writes, bumps the generation and announces it; returns the new generation.
pub(super) static PUT_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local g = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], g)
return g
"#,
    )
});

/// `create` of a document: as [`PUT_DOCUMENT`], but only when the id is free; returns 0 (and
/// bumps nothing) when it is taken.
pub(super) static CREATE_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local g = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], g)
return g
"#,
    )
});

/// `delete` of a document: as [`PUT_DOCUMENT`] without the JSON; returns 0 (and bumps nothing)
/// when there was no such document.
pub(super) static DELETE_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local g = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], g)
return g
"#,
    )
});

/// `kv_increment`: KEYS = the entry; ARGV = delta, TTL in ms (empty: none). A missing key is
/// created as the delta with the TTL; an existing one is `INCRBY`'d, keeping its expiry. Returns
/// the sum as a string (a Lua number would lose digits past 2^53), or nil when the value is not
/// an integer or the sum overflows.
pub(super) static KV_INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('GET', KEYS[1]) then
  if ARGV[2] == '' then
    redis.call('SET', KEYS[1], ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  end
  return ARGV[1]
end
local r = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(r) == 'table' and r.err then
  if string.find(r.err, 'not an integer', 1, true) or string.find(r.err, 'overflow', 1, true) then
    return false
  end
  return redis.error_reply(r.err)
end
return redis.call('GET', KEYS[1])
"#,
    )
});

/// `kv_compare_and_set`: KEYS = the entry; ARGV = `1` if a value is expected (`0`: absence), the
/// expected value, the new value, TTL in ms (empty: none). Returns 1 when it wrote.
pub(super) static KV_COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if v ~= ARGV[2] then return 0 end
elseif v then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
"#,
    )
});

/// Milliseconds since the epoch by Redis' clock, so every instance's heartbeat ages alike.
const NOW_MS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// `heartbeat`: KEYS = the instances hash; ARGV = name, TTL in ms, the beat's JSON. Stores
/// `<expires ms> <json>`.
pub(super) static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NOW_MS}
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now + tonumber(ARGV[2])) .. ' ' .. ARGV[3])
return 0
"#
    ))
});

/// `instances`: KEYS = the instances hash. Deletes the expired beats and returns the JSON of the
/// live ones.
pub(super) static INSTANCES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NOW_MS}
local all = redis.call('HGETALL', KEYS[1])
local live = {{}}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  local expires = sp and tonumber(string.sub(v, 1, sp - 1))
  if expires and expires > now then
    live[#live + 1] = string.sub(v, sp + 1)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"#
    ))
});

/// `leave`: KEYS = the instances hash; ARGV = name, run id. Removes the beat if it is that run's.
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local sp = string.find(v, ' ', 1, true)
if not sp then return 0 end
local ok, beat = pcall(cjson.decode, string.sub(v, sp + 1))
if ok and type(beat) == 'table' and beat.runId == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let id = Uuid::from_u128(7);
        let bytes = encode_entry(2, Status::Failed, "chan", b"record").unwrap();
        let entry = read_entry(id, &bytes).unwrap();
        assert_eq!(entry.stage, 2);
        assert_eq!(entry.status, Status::Failed);
        assert_eq!(entry.channel, b"chan");
        assert_eq!(entry.record, b"record");
        for bad in [
            &b""[..],
            b"\x02\x05\x00",
            b"\x02\x05\x00\x09abc",
            b"\x02\x09\x00\x00",
        ] {
            assert!(matches!(read_entry(id, bad), Err(StoreError::Corrupt(_))));
        }
    }

    #[test]
    fn ids_sort_as_hex() {
        let (a, b) = (Uuid::from_u128(0x0f), Uuid::from_u128(0x10));
        assert!(hex(a) < hex(b));
        assert_eq!(hex(Uuid::max()).len(), 32);
        assert_eq!(parse_hex(hex(b).as_bytes()).unwrap(), b);
        assert!(parse_hex(b"xyz").is_err());
    }

    #[test]
    fn kv_keys_keep_namespaces_apart() {
        let keys = Keys::new("m:");
        assert_ne!(keys.kv("a", "b:c"), keys.kv("a:b", "c"));
        assert_eq!(keys.kv("a", "b"), b"m:kv:1:a:b");
    }

    #[test]
    fn odd_replies_are_errors() {
        assert!(matches!(
            bulk(Value::Int(1), "x"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(pairs(Value::Array(vec![Value::Nil]), "x").is_err());
        assert!(pairs(Value::Array(vec![Value::Nil, Value::Nil]), "x").is_err());
        assert_eq!(counter(Value::Nil, "x").unwrap(), 0);
        assert!(counter(Value::BulkString(b"-1".to_vec()), "x").is_err());
    }
}
