//! The Qwen2.5 ChatML template rendered straight to token ids: the token ledger.
//!
//! This module owns:
//! - [`Source`], the per-token provenance tag RL training uses to decide which
//!   tokens get a policy-gradient loss (only [`Source::Sampled`]);
//! - [`Rendered`], the ledger itself: ids plus one source tag per id;
//! - [`ChatTemplate`], which renders `<|im_start|>{role}\n{content}<|im_end|>\n`
//!   per message, appends later user/tool turns, and appends sampled assistant
//!   ids verbatim. Sampled ids are never decoded and re-encoded: what the
//!   policy produced is exactly what is trained on.
//!
//! It does not own tokenization (see `model::tokenizer`), sampling, tool
//! calling syntax, or Qwen3 "thinking" blocks.
//!
//! Content is encoded one segment (one content string) at a time. Because
//! the special tokens split the text anyway, this equals encoding the whole
//! formatted string for ordinary messages. The one known difference: content
//! that *starts* with a newline run (e.g. "\n\nfoo") would, in whole-string
//! encoding, merge with the "\n" after the role name; here that "\n" stays a
//! Template token of its own.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::tokenizer::Tokenizer;

/// Qwen2.5's default system prompt, used when [`ChatTemplate::default_system`]
/// is true and the conversation does not start with a system message.
pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// Where a ledger token came from.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// ChatML scaffolding: `<|im_start|>`, the role name and its "\n",
    /// `<|im_end|>` and the "\n" after it.
    Template,
    /// System prompt content.
    System,
    /// The first user message: the task (issue text).
    Task,
    /// Later user or tool messages: what the environment sent back.
    Observation,
    /// Assistant tokens produced by the policy.
    Sampled,
}

/// A ChatML role.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name as written after `<|im_start|>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The token ledger: `ids[i]` came from `source[i]`. The two vectors always
/// have the same length; use the methods to grow it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub source: Vec<Source>,
}

impl Rendered {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one id.
    pub fn push(&mut self, id: u32, source: Source) {
        self.ids.push(id);
        self.source.push(source);
    }

    /// Append ids that all share one source.
    pub fn extend(&mut self, ids: &[u32], source: Source) {
        self.ids.extend_from_slice(ids);
        self.source.extend(std::iter::repeat_n(source, ids.len()));
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// How many tokens carry `source`.
    pub fn count(&self, source: Source) -> usize {
        self.source.iter().filter(|&&s| s == source).count()
    }

    /// `true` where the token was sampled by the policy (the loss mask).
    pub fn sampled_mask(&self) -> Vec<bool> {
        self.source.iter().map(|&s| s == Source::Sampled).collect()
    }

    /// Error if `ids` and `source` disagree in length (e.g. after a caller
    /// edited the public fields by hand or deserialized a bad ledger).
    pub fn check(&self) -> Result<()> {
        if self.ids.len() != self.source.len() {
            bail!(
                "token ledger is inconsistent: {} ids but {} source tags",
                self.ids.len(),
                self.source.len()
            );
        }
        Ok(())
    }
}

/// Renders conversations in Qwen2.5 ChatML directly to a [`Rendered`] ledger.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    tokenizer: Tokenizer,
    im_start: u32,
    im_end: u32,
    /// ids of "\n"
    newline: Vec<u32>,
    /// ids of "system\n", "user\n", "assistant\n" (indexed by role_index)
    headers: [Vec<u32>; 3],
    /// Insert [`QWEN_DEFAULT_SYSTEM`] when the conversation has no leading
    /// system message, as Qwen2.5's own template does. Default false.
    pub default_system: bool,
    /// Recognize special-token strings inside message content, as Hugging
    /// Face tokenizers do (default true, for parity). The agent turns it off:
    /// text from an issue or a command output is never a control token.
    pub special_in_content: bool,
}

fn role_index(role: Role) -> usize {
    match role {
        Role::System => 0,
        Role::User => 1,
        Role::Assistant => 2,
    }
}

impl ChatTemplate {
    /// Build a template over `tokenizer`; errors if it lacks the ChatML
    /// special tokens.
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let im_start = tokenizer.im_start()?;
        let im_end = tokenizer.im_end()?;
        let newline = tokenizer.encode("\n")?;
        let headers = [
            tokenizer.encode("system\n")?,
            tokenizer.encode("user\n")?,
            tokenizer.encode("assistant\n")?,
        ];
        Ok(ChatTemplate { tokenizer, im_start, im_end, newline, headers, default_system: false, special_in_content: true })
    }

    /// Builder-style setter for [`ChatTemplate::default_system`].
    pub fn with_default_system(mut self, on: bool) -> Self {
        self.default_system = on;
        self
    }

    /// Builder-style setter for [`ChatTemplate::special_in_content`].
    pub fn with_special_in_content(mut self, on: bool) -> Self {
        self.special_in_content = on;
        self
    }

    /// Encode one message's content under [`ChatTemplate::special_in_content`].
    pub fn encode_content(&self, content: &str) -> Result<Vec<u32>> {
        if self.special_in_content {
            self.tokenizer.encode(content)
        } else {
            self.tokenizer.encode_plain(content)
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn im_start(&self) -> u32 {
        self.im_start
    }

    pub fn im_end(&self) -> u32 {
        self.im_end
    }

    /// `<|im_start|>{role}\n`, all Template.
    fn push_header(&self, out: &mut Rendered, role: Role) {
        out.push(self.im_start, Source::Template);
        out.extend(&self.headers[role_index(role)], Source::Template);
    }

    /// `<|im_end|>\n`, all Template.
    fn push_footer(&self, out: &mut Rendered) {
        out.push(self.im_end, Source::Template);
        out.extend(&self.newline, Source::Template);
    }

    /// One full message `<|im_start|>{role}\n{content}<|im_end|>\n`, content
    /// tagged `source`. Encodes before touching `out`, so an error leaves
    /// `out` unchanged.
    ///
    /// An assistant message's closing `<|im_end|>` is tagged Sampled, like
    /// the content: it is the token by which the policy ends its turn, so
    /// fine-tuning on a rendered reply must teach it (exactly as when the
    /// policy sampled it and `append_sampled` recorded it).
    fn push_message(&self, out: &mut Rendered, role: Role, content: &str, source: Source) -> Result<()> {
        let ids = self.encode_content(content)?;
        self.push_header(out, role);
        out.extend(&ids, source);
        if role == Role::Assistant {
            out.push(self.im_end, Source::Sampled);
            out.extend(&self.newline, Source::Template);
        } else {
            self.push_footer(out);
        }
        Ok(())
    }

    /// Render a conversation. Sources: system content → System, the first
    /// user message → Task, later user messages → Observation, assistant
    /// content and its closing `<|im_end|>` → Sampled; all other scaffolding
    /// → Template. With `add_generation_prompt`, ends with
    /// `<|im_start|>assistant\n` ready for sampling.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Rendered> {
        let mut out = Rendered::new();
        let starts_with_system = messages.first().map(|m| m.role == Role::System).unwrap_or(false);
        if self.default_system && !starts_with_system {
            self.push_message(&mut out, Role::System, QWEN_DEFAULT_SYSTEM, Source::System)?;
        }
        let mut seen_user = false;
        for m in messages {
            let source = match m.role {
                Role::System => Source::System,
                Role::Assistant => Source::Sampled,
                Role::User if !seen_user => {
                    seen_user = true;
                    Source::Task
                }
                Role::User => Source::Observation,
            };
            self.push_message(&mut out, m.role, &m.content, source)?;
        }
        if add_generation_prompt {
            self.push_header(&mut out, Role::Assistant);
        }
        Ok(out)
    }

    /// Append a user turn and a fresh generation prompt:
    /// `<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n`,
    /// content tagged `source` (normally [`Source::Observation`]).
    ///
    /// The ledger must end at a turn boundary: either `<|im_end|>\n` (as
    /// `render` leaves it) or a bare `<|im_end|>` (as a sampled reply that
    /// stopped on `<|im_end|>` leaves it; the missing "\n" is then added as
    /// Template). Anything else — for instance a reply cut off by the token
    /// limit — is an error: the caller decides whether to close the turn with
    /// [`ChatTemplate::close_turn`] or end the episode. Existing ids are never
    /// modified, and on error the ledger is left unchanged.
    pub fn append_user_turn(&self, r: &mut Rendered, content: &str, source: Source) -> Result<()> {
        r.check()?;
        let ends_with_footer = r.ids.len() > self.newline.len()
            && r.ids.ends_with(&self.newline)
            && r.ids[r.ids.len() - self.newline.len() - 1] == self.im_end;
        let ends_with_im_end = r.ids.last() == Some(&self.im_end);
        if !ends_with_footer && !ends_with_im_end {
            bail!(
                "cannot append a user turn: the ledger ({} tokens) does not end with <|im_end|>; \
                 close the previous turn first (ChatTemplate::close_turn) or end the episode",
                r.len()
            );
        }
        let ids = self.encode_content(content)?;
        if ends_with_im_end {
            r.extend(&self.newline, Source::Template);
        }
        self.push_header(r, Role::User);
        r.extend(&ids, source);
        self.push_footer(r);
        self.push_header(r, Role::Assistant);
        Ok(())
    }

    /// Close a turn whose sampled reply did not end with `<|im_end|>` (e.g.
    /// it hit the token limit): appends `<|im_end|>` as Template (it was not
    /// sampled, so it must not be trained on as if it were). If the ledger
    /// already ends with `<|im_end|>` or `<|im_end|>\n`, does nothing.
    pub fn close_turn(&self, r: &mut Rendered) -> Result<()> {
        r.check()?;
        let ends_with_footer = r.ids.len() > self.newline.len()
            && r.ids.ends_with(&self.newline)
            && r.ids[r.ids.len() - self.newline.len() - 1] == self.im_end;
        if r.ids.last() != Some(&self.im_end) && !ends_with_footer {
            r.push(self.im_end, Source::Template);
        }
        Ok(())
    }

    /// Append ids the policy sampled, verbatim, tagged [`Source::Sampled`].
    /// They are never decoded and re-encoded. If the reply stopped on
    /// `<|im_end|>`, include that id here (it was sampled and is trained on);
    /// if the reply did not end with `<|im_end|>`, this function does not add
    /// one — the caller decides ([`ChatTemplate::close_turn`] or stop).
    /// Errors, leaving the ledger unchanged, on an id outside the vocabulary.
    pub fn append_sampled(&self, r: &mut Rendered, ids: &[u32]) -> Result<()> {
        r.check()?;
        let vocab = self.tokenizer.vocab_size();
        if let Some((pos, &bad)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            bail!(
                "sampled id {bad} at position {pos} is outside tokenizer {} (vocab_size {vocab})",
                self.tokenizer.origin()
            );
        }
        r.extend(ids, Source::Sampled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpl() -> ChatTemplate {
        ChatTemplate::new(Tokenizer::tiny().unwrap()).unwrap()
    }

    #[test]
    fn source_serde_is_snake_case() {
        assert_eq!(serde_json::to_string(&Source::Observation).unwrap(), "\"observation\"");
        let s: Source = serde_json::from_str("\"sampled\"").unwrap();
        assert_eq!(s, Source::Sampled);
    }

    #[test]
    fn rendered_helpers_keep_lengths_equal() {
        let mut r = Rendered::new();
        r.push(1, Source::Template);
        r.extend(&[2, 3, 4], Source::Task);
        assert_eq!(r.len(), 4);
        assert_eq!(r.count(Source::Task), 3);
        assert_eq!(r.sampled_mask(), vec![false; 4]);
        assert!(r.check().is_ok());
        r.source.pop();
        assert!(r.check().is_err());
    }

    #[test]
    fn default_system_only_when_flagged() {
        let t = tmpl();
        let msgs = [Message::user("hi")];
        let plain = t.render(&msgs, true).unwrap();
        assert_eq!(plain.count(Source::System), 0);
        let t = t.with_default_system(true);
        let with = t.render(&msgs, true).unwrap();
        let sys = t.tokenizer().encode(QWEN_DEFAULT_SYSTEM).unwrap();
        assert_eq!(with.count(Source::System), sys.len());
        // An explicit system message suppresses the default.
        let explicit = t.render(&[Message::system("be brief"), Message::user("hi")], false).unwrap();
        let brief = t.tokenizer().encode("be brief").unwrap();
        assert_eq!(explicit.count(Source::System), brief.len());
    }

    #[test]
    fn later_user_messages_are_observations() {
        let t = tmpl();
        let r = t
            .render(&[Message::user("task"), Message::assistant("ls"), Message::user("a.py")], true)
            .unwrap();
        let task = t.tokenizer().encode("task").unwrap().len();
        let obs = t.tokenizer().encode("a.py").unwrap().len();
        assert_eq!(r.count(Source::Task), task);
        assert_eq!(r.count(Source::Observation), obs);
    }

    #[test]
    fn user_turn_needs_turn_boundary() {
        let t = tmpl();
        let mut r = t.render(&[Message::user("task")], true).unwrap();
        let before = r.clone();
        assert!(t.append_user_turn(&mut r, "obs", Source::Observation).is_err());
        assert_eq!(r, before);
        t.append_sampled(&mut r, &t.tokenizer().encode("ls").unwrap()).unwrap();
        assert!(t.append_user_turn(&mut r, "obs", Source::Observation).is_err());
        t.close_turn(&mut r).unwrap();
        assert_eq!(r.ids.last(), Some(&t.im_end()));
        assert_eq!(r.source.last(), Some(&Source::Template));
        t.close_turn(&mut r).unwrap(); // idempotent
        assert_eq!(r.ids.iter().filter(|&&i| i == t.im_end()).count(), 2);
        t.append_user_turn(&mut r, "obs", Source::Observation).unwrap();
    }

    #[test]
    fn special_strings_in_content_can_be_plain_text() {
        let t = tmpl();
        let msgs = [Message::user("a <|im_end|> b")];
        let hf = t.render(&msgs, false).unwrap();
        assert_eq!(hf.ids.iter().filter(|&&i| i == t.im_end()).count(), 2, "parsed as a control token, as HF does");
        let t = t.with_special_in_content(false);
        let plain = t.render(&msgs, false).unwrap();
        assert_eq!(plain.ids.iter().filter(|&&i| i == t.im_end()).count(), 1, "only the template's own");
        assert_eq!(t.tokenizer().decode(&plain.ids).unwrap(), t.tokenizer().decode(&hf.ids).unwrap());
    }

    #[test]
    fn append_sampled_rejects_out_of_vocab() {
        let t = tmpl();
        let mut r = t.render(&[Message::user("task")], true).unwrap();
        let before = r.clone();
        let err = t.append_sampled(&mut r, &[5, 9999]).unwrap_err();
        assert!(format!("{err:#}").contains("9999"));
        assert_eq!(r, before);
    }
}
