//! One Lua script call to Redis (phases: admit and settle): the script's
//! text and SHA1, and the `EVALSHA` command written in one buffer, keys
//! first, with the `EVAL` fallback for a node that forgot the script. Used
//! by [`super::RedisStore`].

use std::io::Write;

use redis::{Arg, RedisWrite as _, ToRedisArgs};

/// One Lua script: its text and the SHA1 Redis knows it by.
pub(super) struct LuaScript {
    pub(super) code: &'static str,
    hash: String,
}

impl LuaScript {
    pub(super) fn new(code: &'static str) -> Self {
        Self {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }
}

/// One script call, written straight into the command it sends:
/// `EVALSHA sha numkeys key… arg…`, keys first.
pub(super) struct Call<'a> {
    script: &'a LuaScript,
    command: redis::Cmd,
    /// How many keys the call declares.
    numkeys: usize,
    /// How many keys are written so far.
    keys: usize,
}

impl<'a> Call<'a> {
    /// A call of `script` with `numkeys` keys, to be added with
    /// [`Self::key`] before any argument.
    pub(super) fn new(script: &'a LuaScript, numkeys: usize) -> Self {
        let mut command = redis::Cmd::with_capacity(3 + numkeys + 8, 64 + 64 * numkeys);
        command.arg("EVALSHA").arg(&script.hash).arg(numkeys);
        Self {
            script,
            command,
            numkeys,
            keys: 0,
        }
    }

    /// Appends the key `{prefix}{{user}}:{name…}`, written into the command
    /// itself.
    pub(super) fn key(&mut self, prefix: &str, user: &str, name: &[&str]) -> &mut Self {
        debug_assert_eq!(
            self.command.args_iter().len(),
            3 + self.keys,
            "keys go before arguments"
        );
        let mut key = self.command.writer_for_next_arg();
        write_user_key(&mut key, prefix, user, name);
        drop(key);
        self.keys += 1;
        self
    }

    /// Appends an argument.
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.command.arg(arg);
        self
    }

    /// The command to send: `EVALSHA`.
    pub(super) fn evalsha(&self) -> &redis::Cmd {
        debug_assert_eq!(self.keys, self.numkeys, "a key is missing");
        &self.command
    }

    /// The same call as `EVAL` with the script's text, for a node that
    /// forgot the script.
    pub(super) fn eval(&self) -> redis::Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(self.script.code);
        for arg in self.command.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }
}

/// Writes the key `{prefix}{{user}}:{name…}` into `key`: every key of one
/// user carries the user id as its hash tag, so all of them share a
/// cluster slot.
pub(super) fn write_user_key(key: &mut impl Write, prefix: &str, user: &str, name: &[&str]) {
    // A hash tag must not be empty: for `{}` Redis hashes the whole key,
    // so an id starting with `}` would scatter its keys over slots and
    // every call would fail with CROSSSLOT. Such an id (and, to keep the
    // mapping one-to-one, one starting with \x01) is written after a
    // \x01, which makes the tag non-empty.
    let escape = if user.starts_with(['}', '\u{1}']) {
        "\u{1}"
    } else {
        ""
    };
    for part in [prefix, "{", escape, user, "}:"].iter().chain(name) {
        // Writing into a command's buffer (a Vec) cannot fail.
        let _ = key.write_all(part.as_bytes());
    }
}

/// A reservation id goes to a script as its 32 hex digits, formatted
/// straight into the command's buffer (no `String` made for it).
impl ToRedisArgs for super::ReservationId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        // By hand, not through `fmt`: a flagged request writes its id six
        // times, and the formatting machinery was 6% of its instructions.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((self.0 >> (4 * (31 - i))) & 0xf) as usize];
        }
        out.write_arg(&digits);
    }
}
