-- The header serial an alarm arrived with: for an unattributed alarm by SMS it is
-- all that identifies the terminal besides the MSISDN (spec 10.4.6).
ALTER TABLE alarm_history ADD COLUMN header_serial TEXT;
ALTER TABLE alarm_state ADD COLUMN header_serial TEXT;
