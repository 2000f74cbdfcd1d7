//! The OpenAPI 3.1 description served at `/openapi.json`.

use serde_json::{json, Value};

pub fn document() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let errors = |codes: &[u16]| -> Value {
        let mut m = serde_json::Map::new();
        for c in codes {
            m.insert(c.to_string(), json!({"description": describe(*c), "content": {"application/json": {"schema": error}}}));
        }
        Value::Object(m)
    };
    let with = |ok: Value, codes: &[u16]| -> Value {
        let mut r = errors(codes);
        r.as_object_mut().unwrap().insert("200".into(), ok);
        r
    };
    let body = |schema: &str| json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    let predict_errors = [400, 401, 403, 404, 413, 422, 429, 500, 503];
    json!({
        "openapi": "3.1.0",
        "info": {"title": "zhiku", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Text classification and embeddings from fine-tuned BERT-family models. Requests are batched across clients. When the server has API keys, send `Authorization: Bearer KEY`; /v1 routes need the `predict` scope, /v1/admin and /metrics the `admin` scope."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "integer"}}}}},
                "ClassifyRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "model": {"type": "string", "description": "Model name (optional when one model is loaded)"},
                    "text": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}},
                    "pairs": {"type": "array", "items": {"type": "string"}, "description": "Second texts, for models trained on pairs"},
                    "top_k": {"type": "integer", "minimum": 1, "default": 1}}},
                "ClassifyResponse": {"type": "object", "properties": {"model": {"type": "string"}, "results": {"type": "array", "items": {
                    "type": "object", "properties": {"labels": {"type": "array", "items": {"type": "string"}},
                    "scores": {"type": "array", "items": {"type": "object", "properties": {"label": {"type": "string"}, "score": {"type": "number"}}}}}}}}},
                "EmbedRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "model": {"type": "string"}, "text": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}},
                    "normalize": {"type": "boolean", "default": true}}},
                "EmbedResponse": {"type": "object", "properties": {"model": {"type": "string"}, "dimensions": {"type": "integer"},
                    "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
                "EmbeddingsRequest": {"type": "object", "description": "OpenAI-compatible", "required": ["input"], "properties": {
                    "model": {"type": "string"}, "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "encoding_format": {"type": "string", "enum": ["float"]}, "dimensions": {"type": "integer"}}},
                "EmbeddingsResponse": {"type": "object", "properties": {"object": {"const": "list"}, "model": {"type": "string"},
                    "data": {"type": "array", "items": {"type": "object", "properties": {"object": {"const": "embedding"}, "index": {"type": "integer"},
                        "embedding": {"type": "array", "items": {"type": "number"}}}}},
                    "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}},
                "Model": {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                    "kind": {"type": "string", "enum": ["classifier", "encoder"]}, "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                    "dimensions": {"type": "integer"}, "max_length": {"type": "integer"}, "text_pairs": {"type": "boolean"}, "int8": {"type": "boolean"},
                    "adapter": {"type": ["object", "null"], "description": "for an adapter: its method (lora, adapter, prefix) and base model folder",
                        "properties": {"method": {"type": "string"}, "base": {"type": "string"}}}}},
                "ModelList": {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
                "AddDocuments": {"type": "object", "required": ["documents"], "properties": {"documents": {"type": "array", "maxItems": 1000, "items": {"type": "object", "required": ["text"], "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "text": {"type": "string"}, "source": {"type": "string"}, "date": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": {"description": "kept as metadata"}}}}},
                "SearchRequest": {"type": "object", "required": ["library", "query"], "properties": {"library": {"type": "string"}, "query": {"type": "string", "maxLength": 4000},
                    "mode": {"type": "string", "enum": ["bm25", "dense", "hybrid"]}, "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                    "dense_weight": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                    "filter": {"type": "object", "properties": {"sources": {"type": "array", "items": {"type": "string"}}, "tags": {"type": "array", "items": {"type": "string"}},
                        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"}}}}},
                "AskRequest": {"type": "object", "required": ["library", "question"], "properties": {"library": {"type": "string"}, "question": {"type": "string", "maxLength": 4000},
                    "model": {"type": "string", "description": "a served language model (optional when one is served)"},
                    "mode": {"type": "string", "enum": ["bm25", "dense", "hybrid"]}, "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 4},
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 8192, "default": 384}, "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0},
                    "seed": {"type": "integer", "default": 42}, "stream": {"type": "boolean", "default": false}}},
                "LoadRequest": {"type": "object", "additionalProperties": false, "required": ["name", "path"], "properties": {
                    "int8": {"type": "boolean", "default": false, "description": "run the encoder with int8 linear layers"},
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}, "path": {"type": "string", "description": "A model folder on the server"}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/classify": {"post": {"summary": "Labels and scores for texts", "requestBody": body("ClassifyRequest"), "responses": with(ok("ClassifyResponse"), &predict_errors)}},
            "/v1/embed": {"post": {"summary": "Sentence vectors for texts", "requestBody": body("EmbedRequest"), "responses": with(ok("EmbedResponse"), &predict_errors)}},
            "/v1/embeddings": {"post": {"summary": "OpenAI-compatible embeddings (for a served --clip model, its text tower: texts in the space of its image embeddings)", "requestBody": body("EmbeddingsRequest"), "responses": with(ok("EmbeddingsResponse"), &predict_errors)}},
            "/v1/models": {"get": {"summary": "Loaded models", "responses": with(ok("ModelList"), &[401, 403, 429])}},
            "/v1/admin/models": {"post": {"summary": "Load a model folder under a name (replaces one of that name)", "requestBody": body("LoadRequest"),
                "responses": {"201": {"description": "Loaded", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}}, "400": errors(&[400])["400"], "401": errors(&[401])["401"], "403": errors(&[403])["403"]}}},
            "/v1/admin/models/{name}": {"delete": {"summary": "Unload a model (requests in flight finish)",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(json!({"description": "Unloaded"}), &[401, 403, 404])}},
            "/v1/libraries/{name}/documents": {"post": {"summary": "Add documents to a library (unchanged ones skipped, changed ones replaced); scope library:NAME:write",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": body("AddDocuments"), "responses": with(json!({"description": "Counts of added, replaced and unchanged documents and of chunks"}), &[400, 401, 403, 404, 422, 429])}},
            "/v1/libraries/{name}/documents/{id}": {
                "get": {"summary": "A document and its chunks; scope library:NAME", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": with(json!({"description": "The document"}), &[401, 403, 404, 429])},
                "delete": {"summary": "Remove a document; scope library:NAME:write", "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}, {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "responses": with(json!({"description": "Removed"}), &[401, 403, 404, 429])}},
            "/v1/search": {"post": {"summary": "Search a library (BM25, dense or hybrid) with filters; scope library:NAME", "requestBody": body("SearchRequest"),
                "responses": with(json!({"description": "{\"mode\", \"results\": [{\"id\", \"title\", \"chunk\", \"score\", \"bm25\", \"dense\", \"highlighted\", ...}]}"}), &[400, 401, 403, 404, 422, 429])}},
            "/v1/ask": {"post": {"summary": "Answer a question from a library with a served language model, citing the passages as [n] (\"stream\": true for server-sent events: {\"delta\"} per sentence, then {\"done\": true, ...}, then [DONE]); scope library:NAME", "requestBody": body("AskRequest"),
                "responses": with(json!({"description": "{\"answer\", \"found\", \"citations\": [{\"n\", \"id\", \"title\", \"source\", \"chunk\", \"cited\"}], \"prompt_tokens\", \"completion_tokens\", \"unsupported_sentences\"}", "content": {"application/json": {}, "text/event-stream": {}}}), &[400, 401, 403, 404, 422, 429, 503])}},
            "/v1/audio/transcriptions": {"post": {"summary": "Speech to text (OpenAI-compatible multipart upload: file, model, language, response_format json|verbose_json|text|srt|vtt); scope predict",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"}, "model": {"type": "string"}, "language": {"type": "string"},
                    "response_format": {"type": "string", "enum": ["json", "verbose_json", "text", "srt", "vtt"], "default": "json"},
                    "vad": {"type": "string", "enum": ["true", "false"], "default": "true", "description": "transcribe only the speech voice activity detection finds (silence gives no text)"}}}}}},
                "responses": with(json!({"description": "{\"text\"}, the transcript with segments (verbose_json), or subtitles", "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}}}), &[400, 401, 403, 404, 413, 422, 429])}},
            "/v1/ocr": {"post": {"summary": "Text in an image (multipart upload: file as PNG or JPEG, model, min_confidence, response_format json|text); lines in reading order with boxes and confidences; scope predict",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"}, "model": {"type": "string"}, "min_confidence": {"type": "number", "default": 0.5},
                    "response_format": {"type": "string", "enum": ["json", "text"], "default": "json"}}}}}},
                "responses": with(json!({"description": "{\"model\", \"text\", \"width\", \"height\", \"lines\": [{\"text\", \"box\": [[x, y] x 4], \"confidence\"}]}, or the text", "content": {"application/json": {}, "text/plain": {}}}), &[400, 401, 403, 404, 413, 422, 429])}},
            "/v1/images/tags": {"post": {"summary": "Zero-shot tags of an image from label texts with a CLIP or Chinese-CLIP model (multipart upload: file as PNG or JPEG, labels separated by commas or new lines, template with {} for the label, top, model); scope predict",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file", "labels"], "properties": {
                    "file": {"type": "string", "format": "binary"}, "labels": {"type": "string"}, "template": {"type": "string", "default": "{}"},
                    "top": {"type": "integer", "minimum": 1}, "model": {"type": "string"}}}}}},
                "responses": with(json!({"description": "{\"model\", \"labels\": [{\"label\", \"similarity\", \"probability\"}]}, best first"}), &[400, 401, 403, 404, 413, 422, 429])}},
            "/v1/images/embeddings": {"post": {"summary": "An image's unit-length embedding from a CLIP or Chinese-CLIP model (multipart upload: file, model); POST /v1/embeddings with the same model embeds texts in the same space; scope predict",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"}, "model": {"type": "string"}}}}}},
                "responses": with(json!({"description": "{\"object\": \"list\", \"model\", \"data\": [{\"object\": \"embedding\", \"index\": 0, \"embedding\"}]}"}), &[400, 401, 403, 404, 413, 422, 429])}},
            "/health": {"get": {"summary": "Liveness and loaded model names", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": with(json!({"description": "Prometheus text format", "content": {"text/plain": {}}}), &[401, 403])}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/": {"get": {"summary": "A page to try the models", "security": [], "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}}
        }
    })
}

fn describe(code: u16) -> &'static str {
    match code {
        400 => "Malformed JSON or an invalid request",
        401 => "Missing or unknown API key",
        403 => "The key lacks the scope",
        404 => "Unknown model, library or document",
        413 => "Body, text count or text length over the limit",
        422 => "Well-formed JSON of the wrong shape (wrong types, empty list)",
        429 => "Rate limit exceeded (see Retry-After)",
        500 => "The model failed",
        503 => "Queue full (see Retry-After) or no model loaded",
        _ => "Error",
    }
}
