"""Pure decision policies: catalogue, rules, funnel, holdouts, arbitration. Arrives with decisioning."""
