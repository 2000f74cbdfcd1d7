//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`), rendered with minijinja and Python-compatible string methods
//! (`.strip()`, `.startswith()`, ... as transformers' Jinja environment has them).

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.to_string(), content: content.to_string() }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("the chat template does not parse: {e}"))?;
        Ok(Self { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
    }

    /// The prompt text for `messages`, ending with the opening of the assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            bail!("a chat needs at least one message")
        }
        for m in messages {
            if !["system", "user", "assistant", "tool"].contains(&m.role.as_str()) {
                bail!("unknown message role '{}' (expected system, user, assistant or tool)", m.role)
            }
        }
        let tmpl = self.env.get_template("chat").expect("added in new");
        tmpl.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| anyhow!("the chat template failed: {e}"))
    }
}

/// ChatML, for models that ship no template (the format Qwen and SmolLM use).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turn format, for Gemma files that ship no template (base models).
pub const GEMMA: &str = "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{% if role == 'system' %}{{ '<start_of_turn>user\\n' + message['content'] | trim + '\\n\\n' }}{% else %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let s = t.render(&[Message::new("system", "Be brief."), Message::new("user", "你好")], true).unwrap();
        assert_eq!(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_string_methods_and_errors_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0]['content'].strip().upper() }}{% if messages[0]['content'].startswith(' a') %}!{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[Message::new("user", " abc ")], false).unwrap(), "ABC!");
        let err = t.render(&[Message::new("assistant", "x")], false).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
        assert!(t.render(&[Message::new("robot", "x")], false).is_err());
        assert!(ChatTemplate::new("{% if %}", "", "").is_err());
    }
}
