#!/usr/bin/env python3
"""Chat templates: qat's Jinja subset (trainers/text/chat_template.cpp, through `text_tool chat`)
against transformers' own rendering, the Jinja environment apply_chat_template(tokenize=False)
uses (transformers.utils.chat_template_utils.render_jinja_template), for real templates:
SmolLM2-135M-Instruct's (read from the shipped GGUF), Qwen2.5-Instruct's (with its tools
branch), Meta-Llama-3-8B-Instruct's, Llama-3.1-8B-Instruct's (tools, date_string, namespace-free
tool calls), Mistral-7B-Instruct-v0.1's and Llama-2-chat's (raise_exception on role
alternation), and small templates for the rest of the subset. Rendered strings must be
identical; raise_exception cases must fail on both sides with the same message; bad templates
must fail with one line naming line:column.

    test_chat_template.py TEXT_TOOL

No network: every template is in this file or in the GGUF.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conformance import report, smollm2_path  # noqa: E402

# The templates as their tokenizer_config.json files hold them (JSON string literals).
# Qwen/Qwen2.5-*-Instruct (public text; identical in two independent copies found).
QWEN25 = json.loads(r'''
"{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"''')
# meta-llama/Llama-3.1-8B-Instruct (public text, as copied into a tokenizer_config.json).
LLAMA31 = json.loads(r'''"{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"''')
# meta-llama/Meta-Llama-3-8B-Instruct, mistralai/Mistral-7B-Instruct-v0.1, meta-llama/Llama-2-7b-chat-hf.
META_LLAMA3 = json.loads(r'''"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"''')
MISTRAL_V01 = json.loads(r'''"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"''')
LLAMA2_CHAT = json.loads(r'''"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"''')

# The rest of the subset, in small templates (whitespace control, loops, namespace, filters...).
FEATURES = {
    "loop+namespace": (
        "{% set ns = namespace(n=0, last='', found=false) %}\n"
        "{% for m in messages %}\n"
        "    {% set ns.n = ns.n + 1 %}\n"
        "    {%- if loop.last %}{% set ns.last = m.role %}{% endif %}\n"
        "  {{ loop.index0 }}/{{ loop.index }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}"
        "{{ ' first' if loop.first }}{{ ' last' if loop.last else '' }} {{ loop.cycle('odd', 'even') }}"
        " prev={{ loop.previtem.role if loop.previtem is defined else '-' }}\n"
        "{% endfor %}\n"
        "n={{ ns.n }} last={{ ns.last }} {{ ns.found }}\n"),
    "filters": (
        "{{ messages | map(attribute='role') | join(',') }}|"
        "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|"
        "{{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | unique | list }}|"
        "{{ (messages | first).content | upper }}|{{ (messages | last)['content'][:5] | lower }}|"
        "{{ messages[1:] | length }}|{{ messages[::-1][0].role }}|{{ messages[-1:][0].role | title }}|"
        "{{ x | default('dflt') }}|{{ '' | default('empty', true) }}|{{ none | string }}|"
        "{{ ['b', 'code_interpreter', 'a'] | reject('equalto', 'code_interpreter') | join(', ') }}|"
        "{{ [1, 2, 3] | select('odd') | list }}|{{ 'abc' | reverse }}|{{ [3, 1] | reverse | list }}|"
        "{{ ' x ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'a-b-c' | replace('-', '+') }}|"
        "{{ 'hello world' | capitalize }}|{{ '3' | int + 1 }}|{{ '2.5' | float }}|{{ -3 | abs }}|"
        "{{ {'k': 1, 'j': 2} | items | list }}|{{ messages | count }}|{{ 'ab' | list }}"),
    "tojson": (
        "{{ messages | tojson }}|{{ {'k': [1, {'z': 'é\\n\"q\"'}, none, true, 2.5, -0.1]} | tojson }}|"
        "{{ {'b': 1, 'a': [1, 2], 'c': {}, 'd': []} | tojson(indent=2, sort_keys=true) }}|"
        "{{ 'é€😀\\u0001' | tojson(ensure_ascii=true) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}|"
        "{{ messages[0] | tojson(indent=4) }}"),
    "tests+operators": (
        "{% for m in messages %}"
        "{{ m.content is string }}{{ m.missing is defined }}{{ m.missing is not defined }}"
        "{{ m.missing is none }}{{ none is none }}{{ m is mapping }}{{ m is iterable }}"
        "{{ 'x' in m.content }}{{ 'role' in m }}{{ m.role not in ['user'] }}"
        "{{ loop.index is odd }}{{ loop.index is divisibleby 2 }}{{ m.content | length > 3 }};"
        "{% endfor %}"
        "{{ 7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 8 }} {{ 1.5 + 1 }} {{ 1e20 }} {{ 0.1 + 0.2 }} "
        "{{ 'ab' * 2 }} {{ [1] + [2] }} {{ 'a' ~ 1 ~ none ~ true }} {{ [1, 'b', none, true, 2.5, (1,)] }} "
        "{{ {'a': 'it\\'s'} }} {{ 1 < 2 < 3 }} {{ 'b' > 'a' }} {{ not 0 and 'x' or 'y' }} "
        "{{ (1, 2) == (1, 2) }} {{ 1 == 1.0 }} {{ 'a' if false }}|"),
    "methods": (
        "{% for m in messages %}"
        "{{ m.content.strip() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}|"
        "{{ m.content.split() }}|{{ m.content.split('\\n') }}|{{ m.content.split(' ', 1) }}|"
        "{{ m.content.startswith('H') }}{{ m.content.endswith(('!', '?')) }}|"
        "{{ m.content.upper() }}|{{ m.content.lower() }}|{{ m.content.title() }}|"
        "{{ m.content.replace('o', '0') }}|{{ m.content.find('o') }}|{{ m.content.count('l') }}|"
        "{{ m.role.capitalize() }}|{{ m.get('role') }}{{ m.get('nope', 'dflt') }}|"
        "{% for k, v in m.items() %}{{ k }}={{ v | length }},{% endfor %}|"
        "{{ m.keys() | list }}|{{ '-'.join(['a', 'b']) }}|{{ m.content.splitlines() }}\n"
        "{% endfor %}"),
    "for-if+break+else": (
        "{% for m in messages if m.role != 'system' %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}"
        "{% if m.content == '' %}{% continue %}{% endif %}"
        "[{{ loop.index }}/{{ loop.length }} {{ m.role }}:{{ m.content | length }}]"
        "{% else %}no messages{% endfor %}"
        "{% for x in [] %}x{% else %} empty{% endfor %}"
        "{% for a, b in [(1, 2), [3, 4]] %} {{ a + b }}{% endfor %}"
        "{% set t = 'a', 'b' %} {{ t }}{% set p, q = [5, 6] %} {{ p * q }}"
        "{% set block %}  captured {{ messages | length }}  {% endset %}[{{ block }}]"
        "{% for i in range(3) %}{% set outer = i %}{% endfor %} {{ outer is defined }}"
        "{% if true %}{% set leaked = 1 %}{% endif %} {{ leaked }}"),
    "whitespace": (
        "  {% if true %}\n  a\n  {% endif %}\n"
        "  b {{ 1 }}  {% if true %}c{% endif %}\n"
        "x  {# comment #}  y\n  {#- stripped -#}\n  z\n"
        "    {%+ if true %}kept-indent{% endif %}\n"
        "{% if true +%}\nkept-newline\n{%- endif %}\n"
        "p  {{- ' q ' -}}  r\n"
        "{% for m in messages %}\n    {{ m.role }}\n{% endfor %}\n"
        "{% generation %}gen{% endgeneration %}\n"
        "{{ 'a' }}\r\nafter crlf\n\n"),
    "raise-computed": (
        "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
        "{{ raise_exception('Unknown role: ' ~ m.role ~ ' at ' ~ loop.index0) }}{% endif %}"
        "{{ m.content }}{% endfor %}"),
    "llama-3.2-date": (
        "{%- if not date_string is defined %}\n"
        "    {%- if strftime_now is defined %}\n"
        "        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n"
        "    {%- else %}\n"
        "        {%- set date_string = \"26 Jul 2024\" %}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
        "Today Date: {{ date_string }} {{ strftime_now('%Y-%m-%d') }}"),
    "misc": (
        "{{ 1 if true else 2 }}{{ [1, 2, 3][-1] }}{{ 'abc'[-2:] }}{{ (messages | length) - 1 }}|"
        "{% for c in 'héllo' %}{{ c }}.{% endfor %}|{{ 'x' ~ messages[0].nope ~ 'y' }}|"
        "{{ true + 1 }} {{ true and 'x' }} {{ none or 0 }} {{ [] or 'empty' }}|"
        "{{ messages | map('tojson') | join(';') }}|{{ messages | selectattr('content') | list | length }}|"
        "{{ '%d' }} {{ 'it''s' }} {{ \"a\" 'b' }} {{ '\\x41\\u00e9\\t|' }}|"
        "{% for a in [1] %}{% for b in [2, 3] %}{{ loop.depth }}{{ loop.index }}{% endfor %}{% endfor %}|"
        "{{ range(2, 10, 3) | list }}{{ ['A', 'a', 'b'] | unique | list }}|"
        "{{ 3 in [1, 2, 3] }}{{ 'a' in 'cat' }}{{ '{' }}{{ {'x': {'y': 1}} }}{{ '}}' }}|"
        "{{ 5 is even }}{{ 'A' is upper }}{{ none is sameas none }}|{{ -2 ** 2 }} {{ 1e-7 }} {{ 0.5e3 }}\n"
        "{%- for m in messages -%}\n  {{- m.role -}}\n{%- endfor -%}  \n  end"),
    "dict+undefined": (
        "{% set d = dict(a=1, b='two') %}{{ d }} {{ d.a }} {{ d['b'] }} {{ d.zz }}|"
        "{{ messages[99] }}|{{ messages[99] is defined }}|{{ none.x is defined }}|"
        "{{ tools }} {{ tools is none }} {{ documents }} {{ custom_tools is defined }}|"
        "{{ bos_token }}{{ eos_token }}|{{ add_generation_prompt }}"),
}

# (template name, template, special tokens)
SPECIAL_LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
SPECIAL_MISTRAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
SPECIAL_QWEN = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
SPECIAL_SMOL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|im_end|>"}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system+user": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "What is 2+2?"}],
    "multi-turn+system": [{"role": "system", "content": "Be kind."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello, how can I help?"},
                          {"role": "user", "content": "Tell me a joke."}],
    "multi-turn": [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
                   {"role": "user", "content": "Three"}, {"role": "assistant", "content": "Four"}],
    "unicode+whitespace": [
        {"role": "system", "content": "  Réponds en français — s’il te plaît.\n"},
        {"role": "user", "content": "  Héllo wörld 你好 🙂\n\nline two\t \n"},
        {"role": "assistant", "content": "\n Ça va ? \u00a0"},
        {"role": "user", "content": "ß\u3000end\r\n"}],
    "empty-content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""},
                      {"role": "user", "content": "again"}],
    "unknown-role": [{"role": "user", "content": "Hi"}, {"role": "critic", "content": "Hmm."}],
    "assistant-first": [{"role": "assistant", "content": "I start."},
                        {"role": "user", "content": "OK"}],
    "two-users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "system-only": [{"role": "system", "content": "Only a system prompt."}],
    "empty": [],
}

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city — with “quotes”.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "City name"},
                                      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
]

BAD_TEMPLATES = {
    # name: (template, expected line:col, words the message must contain)
    "macro": ("{{ bos_token }}\n{% macro greet(name) %}Hi {{ name }}{% endmacro %}", "2:4", "tag 'macro'"),
    "call": ("{% call foo() %}x{% endcall %}", "1:4", "tag 'call'"),
    "include": ("a\n  {% include 'other.jinja' %}", "2:6", "tag 'include'"),
    "unknown-filter": ("{% for m in messages %}\n{{ m.content | frobnicate }}{% endfor %}", "2:16", "filter 'frobnicate'"),
    "unknown-test": ("{% if messages is frob %}x{% endif %}", "1:19", "test 'frob'"),
    "unknown-method": ("{{ messages[0].content.zfill(3) }}", "1:29", "method 'zfill'"),
    "unclosed-if": ("{% for m in messages %}\n  {% if m %}x\n{% endfor %}", "3:4", "open block is 'if' at 2:6"),
    "unclosed-for": ("{% for m in messages %}\n{{ m.content }}", "1:4", "unclosed tag 'for'"),
    "stray-end": ("x{% endif %}", "1:5", "unexpected tag 'endif'"),
    "syntax": ("ok\n{{ messages[0]['role' }}", "2:23", "unexpected '}', expected ']'"),
    "bad-expression": ("{% if messages[0].role == %}x{% endif %}", "1:27", "unexpected end of statement"),
    "unterminated-string": ("{{ 'abc }}", "1:4", "unterminated string"),
    "missing-end": ("{{ messages ", "1:1", "missing '}}'"),
}


def smollm2_template() -> str:
    import gguf
    reader = gguf.GGUFReader(smollm2_path())
    field = reader.fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def oracle(template, messages, add_generation_prompt, special, tools=None):
    """('ok', text) or ('raised', message) or ('error', message), as transformers renders."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=template,
            add_generation_prompt=add_generation_prompt, **special)
        return "ok", rendered[0]
    except jinja2.exceptions.UndefinedError as e:  # a subclass of TemplateError: check first
        return "error", str(e)
    except jinja2.exceptions.TemplateSyntaxError as e:
        return "error", str(e)
    except jinja2.exceptions.TemplateError as e:  # raise_exception()
        return "raised", str(e)
    except Exception as e:  # noqa: BLE001 - TypeError etc.: the template failed
        return "error", f"{type(e).__name__}: {e}"


class Tool:
    def __init__(self, exe, tmp):
        self.exe, self.tmp, self.n = exe, tmp, 0

    def write(self, text, suffix):
        self.n += 1
        path = os.path.join(self.tmp, f"{self.n}{suffix}")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        return path

    def render(self, template_path, messages, add_generation_prompt, special, tools=None, extra=()):
        msgs = self.write(json.dumps(messages, ensure_ascii=False), ".json")
        out = os.path.join(self.tmp, f"{self.n}.out")
        cmd = [self.exe, "chat", template_path, msgs, out, *extra]
        if add_generation_prompt:
            cmd.append("--add-generation-prompt")
        for k, v in special.items():
            cmd += ["--token", f"{k}={v}"]
        if tools is not None:
            cmd += ["--tools", self.write(json.dumps(tools, ensure_ascii=False), ".json")]
        p = subprocess.run(cmd, capture_output=True, timeout=30)
        err = p.stderr.decode("utf-8", "replace")
        if p.returncode == 0:
            with open(out, "rb") as f:
                return "ok", f.read().decode("utf-8"), err
        m = re.match(r"error: template raised: (.*)$", err.rstrip("\n"), re.S)
        if p.returncode == 1 and m:
            return "raised", m.group(1), err
        return "error", f"exit {p.returncode}: {err.strip()}", err


def first_diff(a, b):
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return f"at {i}: qat {a[max(0, i - 20):i + 30]!r} vs transformers {b[max(0, i - 20):i + 30]!r}"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    exe = sys.argv[1]
    checks, failures = 0, []
    templates = [
        ("SmolLM2-135M-Instruct (GGUF)", smollm2_template(), SPECIAL_SMOL, False),
        ("Qwen2.5-Instruct", QWEN25, SPECIAL_QWEN, True),
        ("Meta-Llama-3-8B-Instruct", META_LLAMA3, SPECIAL_LLAMA3, False),
        ("Llama-3.1-8B-Instruct", LLAMA31, SPECIAL_LLAMA3, True),
        ("Mistral-7B-Instruct-v0.1", MISTRAL_V01, SPECIAL_MISTRAL, False),
        ("Llama-2-chat", LLAMA2_CHAT, SPECIAL_MISTRAL, False),
    ] + [(f"subset: {k}", v, SPECIAL_MISTRAL, False) for k, v in FEATURES.items()]
    outcomes = {"ok": 0, "raised": 0, "error": 0}
    with tempfile.TemporaryDirectory() as tmp:
        tool = Tool(exe, tmp)

        def compare(label, template_path, template, messages, agp, special, tools=None, tool_special=None):
            nonlocal checks
            checks += 1
            want = oracle(template, messages, agp, special, tools)
            got = tool.render(template_path, messages, agp, special if tool_special is None else tool_special, tools)
            outcomes[want[0]] += 1
            if want[0] == "error":  # the template itself fails in Jinja: qat must fail too
                if got[0] != "error" or not got[1].startswith("exit 1: error: ") or "\n" in got[2].strip():
                    failures.append(f"{label}: transformers fails ({want[1]}), qat gives {got[0]}: {got[1][:200]!r}")
                return
            if got[:2] != want:
                detail = first_diff(got[1], want[1]) if got[0] == want[0] == "ok" else f"qat {got[:2]!r} vs transformers {want!r}"
                failures.append(f"{label}: {detail}")

        for name, template, special, has_tools in templates:
            path = tool.write(template, ".jinja")
            for conv_name, messages in CONVERSATIONS.items():
                for agp in (False, True):
                    compare(f"{name} / {conv_name} / add_generation_prompt={agp}", path, template, messages,
                            agp, special)
            if has_tools:
                for conv_name in ("user", "system+user", "multi-turn+system", "system-only", "empty"):
                    compare(f"{name} / {conv_name} / tools", path, template, CONVERSATIONS[conv_name],
                            True, special, TOOLS)

        # A tokenizer_config.json as the template file: its chat_template and special tokens.
        config = {"bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "normalized": False,
                                "rstrip": False, "single_word": False, "special": True},
                  "eos_token": "<|eot_id|>", "chat_template": META_LLAMA3}
        config_path = os.path.join(tmp, "tokenizer_config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        for agp in (False, True):
            compare(f"tokenizer_config.json / add_generation_prompt={agp}", config_path, META_LLAMA3,
                    CONVERSATIONS["multi-turn+system"], agp, SPECIAL_LLAMA3, None, tool_special={})
            # ... and the same via a real tokenizer's apply_chat_template (offline, built here).
            checks += 1
            from tokenizers import Tokenizer, models
            from transformers import PreTrainedTokenizerFast
            hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                         bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
            hf.chat_template = META_LLAMA3
            want = hf.apply_chat_template(CONVERSATIONS["multi-turn+system"], tokenize=False, add_generation_prompt=agp)
            got = tool.render(config_path, CONVERSATIONS["multi-turn+system"], agp, {})
            if got[:2] != ("ok", want):
                failures.append(f"apply_chat_template / add_generation_prompt={agp}: {got[:2]!r} vs {want!r}")

        # Bad templates: exit 1, one line on stderr naming the origin and line:column, no trace.
        for name, (template, where, words) in BAD_TEMPLATES.items():
            checks += 1
            path = tool.write(template, ".jinja")
            got = tool.render(path, CONVERSATIONS["user"], False, {})
            err = got[2]
            ok = (got[0] == "error" and got[1].startswith("exit 1: ") and err.count("\n") == 1
                  and err.startswith(f"error: {path}:{where}: ") and words in err
                  and "Traceback" not in err and "terminate called" not in err)
            if not ok:
                failures.append(f"bad template {name}: expected 'error: {path}:{where}: ...{words}...', got {err!r}")
            checks += 1
            check = tool.render(path, [], False, {}, extra=("--check",))
            if check[2] != err:
                failures.append(f"bad template {name}: --check reports {check[2]!r}, render reported {err!r}")
    print(f"conversations rendered by transformers: {outcomes['ok']} rendered, "
          f"{outcomes['raised']} raise_exception, {outcomes['error']} template errors")
    return report(checks, failures)


if __name__ == "__main__":
    sys.exit(main())
