BEGIN TRANSACTION;
CREATE TABLE audit_checkpoints (
	seq INTEGER NOT NULL, 
	ts VARCHAR NOT NULL, 
	head VARCHAR(64) NOT NULL, 
	prev_sig VARCHAR NOT NULL, 
	key_id VARCHAR NOT NULL, 
	sig VARCHAR NOT NULL, 
	PRIMARY KEY (seq)
);
INSERT INTO "audit_checkpoints" VALUES(8,'2026-12-03T14:11:37.142Z','b9372d03b1ed785e20729ed84822e0e1a4026d8272fa708593a5329091faa881','','ed25519:d539ae6108d896d4','UEyZNQPzThkZVhOxELTvqIk97wwXa9J5uz5rmH5LhjH6X+0HMi6mhiB8uzxEwduT9cfXL6iEYxzlVZvsRsVPDw==');
CREATE TABLE audit_content (
	record_id VARCHAR NOT NULL, 
	prompt TEXT, 
	output TEXT, 
	expires_at VARCHAR NOT NULL, 
	PRIMARY KEY (record_id)
);
INSERT INTO "audit_content" VALUES('01M8Y3Y5HAQ41Z6BDBKDR9TM5G','[system]
Be brief.
[user]
question 0','answer 0','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HD5KHR0N9MRQAPFECS','[system]
Be brief.
[user]
question 1','answer 1','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HE20KP4096NZ0GNPRB','[system]
Be brief.
[user]
question 2','answer 2','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HFPFPHG45V69ZNAQEK','[system]
Be brief.
[user]
question 3','answer 3','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HG50XXS1QK63S3TJ0W','[system]
Be brief.
[user]
question 4','answer 4','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HHX0QDNN3X7K1A5G2E','[system]
Be brief.
[user]
question 5','answer 5','2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HHNJR58MB8BY9V9XZB',NULL,NULL,'2027-01-02T14:11:37.000Z');
INSERT INTO "audit_content" VALUES('01M8Y3Y5HJ1EP66YYMT7DF8D51',NULL,NULL,'2027-01-02T14:11:37.000Z');
CREATE TABLE audit_pending (
	call VARCHAR NOT NULL, 
	body TEXT NOT NULL, 
	PRIMARY KEY (call)
);
INSERT INTO "audit_pending" VALUES('01M8Y3Y5H8950N0QZPA5WPBWYW','{"request_id":"cut","surface":"ide_completion","type":"llm.interaction"}');
CREATE TABLE audit_records (
	seq INTEGER NOT NULL, 
	id VARCHAR NOT NULL, 
	ts VARCHAR NOT NULL, 
	type VARCHAR NOT NULL, 
	surface VARCHAR, 
	actor_ref VARCHAR, 
	conversation_id VARCHAR, 
	request_id VARCHAR, 
	action VARCHAR, 
	outcome VARCHAR, 
	envelope TEXT NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (seq), 
	UNIQUE (id)
);
INSERT INTO "audit_records" VALUES(1,'01M8Y3Y5HAQ41Z6BDBKDR9TM5G','2026-12-03T14:11:37.130Z','llm.interaction','support_chat','hmac:e196d371ced1c5a398c3dca80a0a465e','conv_1','msg_0','allow','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:e196d371ced1c5a398c3dca80a0a465e"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"allow","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[],"scanner":"secrets","verdict":"pass"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HAQ41Z6BDBKDR9TM5G","message_id":"msg_0","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:589881f7ea03ccadc20eeab3b0cee4c5","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:d846918e5646a64b1d30f330e7d58d91","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_0","seq":1,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.126Z","total_ms":1,"ttft_ms":null},"ts":"2026-12-03T14:11:37.130Z","type":"llm.interaction","v":1}','0000000000000000000000000000000000000000000000000000000000000000','75a032ca47560a74b88e3ad3f6d55be044d431a49da53008a97985e8a6ef4e58');
INSERT INTO "audit_records" VALUES(2,'01M8Y3Y5HD5KHR0N9MRQAPFECS','2026-12-03T14:11:37.133Z','llm.interaction','support_chat','hmac:fb5f182266f6c557cfd9a8ab3ed771f7','conv_1','msg_1','allow','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:fb5f182266f6c557cfd9a8ab3ed771f7"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"allow","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[],"scanner":"secrets","verdict":"pass"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HD5KHR0N9MRQAPFECS","message_id":"msg_1","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:733abbdb85c10c7badca72d3f81c866b","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:4de73b65fb680d639bcaacfa71aef560","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_1","seq":2,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.127Z","total_ms":0,"ttft_ms":null},"ts":"2026-12-03T14:11:37.133Z","type":"llm.interaction","v":1}','75a032ca47560a74b88e3ad3f6d55be044d431a49da53008a97985e8a6ef4e58','c81b9d018f7089d7346d9f1e8f9fa9b50ec6df20107b4c9ac43f1cd296577313');
INSERT INTO "audit_records" VALUES(3,'01M8Y3Y5HE20KP4096NZ0GNPRB','2026-12-03T14:11:37.134Z','llm.interaction','support_chat','hmac:9b8b2bedc8a9fc085e751934c3c4aa53','conv_1','msg_2','redact','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:9b8b2bedc8a9fc085e751934c3c4aa53"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"redact","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[{"end":23,"placeholder":"[REDACTED:aws_access_key]","segment":1,"start":3,"type":"aws_access_key"}],"scanner":"secrets","verdict":"redact"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HE20KP4096NZ0GNPRB","message_id":"msg_2","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:81e09f57c844735fd76cdb65ca70d45d","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:e2cbab36b3953ed44d5f27041c883bf9","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_2","seq":3,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.127Z","total_ms":0,"ttft_ms":null},"ts":"2026-12-03T14:11:37.134Z","type":"llm.interaction","v":1}','c81b9d018f7089d7346d9f1e8f9fa9b50ec6df20107b4c9ac43f1cd296577313','c81ca40d72b0fefe81edd44735e5211db6b1841ce7fce82738f9909610f22e39');
INSERT INTO "audit_records" VALUES(4,'01M8Y3Y5HFPFPHG45V69ZNAQEK','2026-12-03T14:11:37.135Z','llm.interaction','support_chat','hmac:23302ebf94d1cb56294d893c18506eed','conv_1','msg_3','allow','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:23302ebf94d1cb56294d893c18506eed"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"allow","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[],"scanner":"secrets","verdict":"pass"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HFPFPHG45V69ZNAQEK","message_id":"msg_3","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:0ef2de85ccabcae39c86671ded81f8a8","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:569a406c57620ce01bfe125ff59ffe5f","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_3","seq":4,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.128Z","total_ms":0,"ttft_ms":null},"ts":"2026-12-03T14:11:37.135Z","type":"llm.interaction","v":1}','c81ca40d72b0fefe81edd44735e5211db6b1841ce7fce82738f9909610f22e39','2c2c0024b659946c1421af262d97ffb225ee2dcb56e33e98f60d57b42b84a821');
INSERT INTO "audit_records" VALUES(5,'01M8Y3Y5HG50XXS1QK63S3TJ0W','2026-12-03T14:11:37.136Z','llm.interaction','support_chat','hmac:311cf7d51dae07ddebfb3709fc84cbc5','conv_1','msg_4','allow','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:311cf7d51dae07ddebfb3709fc84cbc5"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"allow","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[],"scanner":"secrets","verdict":"pass"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HG50XXS1QK63S3TJ0W","message_id":"msg_4","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:49c16fe533966d747d8a4bdb672f5634","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:41819b17d6a219f7fd5adc23aa165a3a","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_4","seq":5,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.128Z","total_ms":0,"ttft_ms":null},"ts":"2026-12-03T14:11:37.136Z","type":"llm.interaction","v":1}','2c2c0024b659946c1421af262d97ffb225ee2dcb56e33e98f60d57b42b84a821','e5585798e8d5b8abf783a002f2262ea34b8947d8ef7eea7d33fae38035b5c153');
INSERT INTO "audit_records" VALUES(6,'01M8Y3Y5HHX0QDNN3X7K1A5G2E','2026-12-03T14:11:37.137Z','llm.interaction','support_chat','hmac:36eed3095e0f23e74dacf314b5772ca8','conv_1','msg_5','allow','ok','{"actor":{"client":"tandem-widget","ip_ref":"hmac:331cfaa450ebe5ddfaea99324709ff08","kind":"widget_visitor","tenant":"demo","user_ref":"hmac:36eed3095e0f23e74dacf314b5772ca8"},"content_until":"2027-01-02T14:11:37.000Z","conversation_id":"conv_1","guard":{"action":"allow","input":[{"findings":[],"scanner":"size","verdict":"pass"},{"findings":[],"scanner":"secrets","verdict":"pass"}],"output":[{"findings":[],"scanner":"secrets","verdict":"pass"}],"policy_version":"2026-11-22","profile":"support_chat"},"id":"01M8Y3Y5HHX0QDNN3X7K1A5G2E","message_id":"msg_5","model":{"name":"SmolLM2-135M-Instruct","params":{"max_tokens":16,"seed":null,"stop_count":0,"temperature":0.0,"top_p":1.0},"quantization":"q4"},"outcome":{"error_code":null,"status":"ok"},"output":{"chars":8,"chunks":1,"content_hmac":"hmac:646416ed2fd0ac776af58e9f406a0ca9","finish_reason":"stop","tokens":3},"prompt":{"chars":36,"content_hmac":"hmac:8ec7e8538f16fe9e18a1dd4dc0bc166a","content_kept":true,"context":null,"kind":"chat","tokens":20},"request_id":"msg_5","seq":6,"session_id":null,"surface":"support_chat","timing":{"started_at":"2026-12-03T14:11:37.128Z","total_ms":0,"ttft_ms":null},"ts":"2026-12-03T14:11:37.137Z","type":"llm.interaction","v":1}','e5585798e8d5b8abf783a002f2262ea34b8947d8ef7eea7d33fae38035b5c153','cf90182dfb3c12364adbf6d7250c4ce4a8d9259d3185abdbd5fefbe2a9c060d2');
INSERT INTO "audit_records" VALUES(7,'01M8Y3Y5HHNJR58MB8BY9V9XZB','2026-12-03T14:11:37.137Z','request.refused','ide_completion',NULL,NULL,'cmpl-0',NULL,'refused','{"actor":{"client":"curl/8","ip_ref":"hmac:77b889cbdc3c9ace6cf092acd8f41b98","kind":"api_client","tenant":null,"user_ref":null},"content_until":"2027-01-02T14:11:37.000Z","guard":{"action":null},"id":"01M8Y3Y5HHNJR58MB8BY9V9XZB","outcome":{"error_code":"invalid_json","param":null,"status":"refused"},"request_id":"cmpl-0","seq":7,"surface":"ide_completion","ts":"2026-12-03T14:11:37.137Z","type":"request.refused","v":1}','cf90182dfb3c12364adbf6d7250c4ce4a8d9259d3185abdbd5fefbe2a9c060d2','23b0c8b06fb1bd1d3383093c2ccb95ef8d818fe0ec847be9cc4db843da1bd4e7');
INSERT INTO "audit_records" VALUES(8,'01M8Y3Y5HJ1EP66YYMT7DF8D51','2026-12-03T14:11:37.138Z','completion.feedback','ide_completion',NULL,NULL,'cmpl-00000000000000000000000000000000',NULL,'accepted','{"actor":{"client":"vscode/1.0 tandem","kind":"ide_user"},"content_until":"2027-01-02T14:11:37.000Z","guard":{"action":null},"id":"01M8Y3Y5HJ1EP66YYMT7DF8D51","outcome":{"status":"accepted"},"request_id":"cmpl-00000000000000000000000000000000","seq":8,"surface":"ide_completion","ts":"2026-12-03T14:11:37.138Z","type":"completion.feedback","v":1}','23b0c8b06fb1bd1d3383093c2ccb95ef8d818fe0ec847be9cc4db843da1bd4e7','b9372d03b1ed785e20729ed84822e0e1a4026d8272fa708593a5329091faa881');
CREATE INDEX ix_audit_ts ON audit_records (ts);
CREATE INDEX ix_audit_actor ON audit_records (actor_ref, ts);
CREATE INDEX ix_audit_action ON audit_records (action, ts);
CREATE INDEX ix_audit_surface ON audit_records (surface, ts);
CREATE INDEX ix_audit_outcome ON audit_records (outcome, ts);
CREATE INDEX ix_audit_conversation ON audit_records (conversation_id, seq);
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_content_no_update BEFORE UPDATE ON audit_content BEGIN SELECT RAISE(ABORT, 'audit content cannot be changed'); END;
CREATE TRIGGER audit_content_expire_only BEFORE DELETE ON audit_content WHEN old.expires_at > strftime('%Y-%m-%dT%H:%M:%fZ','now') BEGIN SELECT RAISE(ABORT, 'audit content can only be deleted once it has expired'); END;
COMMIT;
