-- Add a dismissal or conversion to a profile's contact history, in the profile's slot.
-- KEYS: the profile's p, k and alias (ProfileKeys.contact_keys()).
-- ARGV[1] the contact's member   ARGV[2] its time (ms)   ARGV[3] inactivity TTL (ms)
--
-- Returns {"redirect", customer_id} when the profile is an anonymous visitor linked to a customer since
-- the decision (nothing added: the caller adds it to the customer, whose contact policy counts it),
-- {"gone"} when the profile holds nothing any more (erased, or expired): an outcome reported late must
-- not bring an erased customer's history back; else {"ok"}.
local linked = redis.call("GET", KEYS[3])
if linked then
  return {"redirect", linked}
end
if redis.call("EXISTS", KEYS[1], KEYS[2]) == 0 then
  return {"gone"}
end
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[1])
redis.call("PEXPIRE", KEYS[2], ARGV[3])
return {"ok"}
