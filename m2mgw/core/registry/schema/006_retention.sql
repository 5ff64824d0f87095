-- m2mgw registry, schema version 6: indexes that let history be pruned by age in
-- small batches (D-200..D-209). Each pruning batch takes the oldest rows by the time
-- column through one of these, so a batch costs the rows it deletes, not a table scan.
-- The partial indexes hold only finished rows: live state is never a candidate.
CREATE INDEX messages_time ON messages (time);
CREATE INDEX statistics_time ON statistics (time);
CREATE INDEX alarm_history_time ON alarm_history (time);
CREATE INDEX requests_finished ON requests (updated_at) WHERE state NOT IN ('queued', 'sent');
CREATE INDEX app_messages_finished ON app_messages (updated_at)
    WHERE state NOT IN ('QUEUED', 'SENT');
CREATE INDEX sms_outbox_done ON sms_outbox (updated_at) WHERE state <> 'pending';
CREATE INDEX file_transactions_expires ON file_transactions (expires_at);
