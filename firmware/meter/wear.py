# Flash wear and footprint of the store's format (bench/flash_wear.py, tests).
# Host-side arithmetic over store.layout: the meter never imports it.
from meter import store
from meter.ring import HDR_SLOTS, NSLOT, SLOT, size_class


def footprint(block_size=4096):
    """Flash bytes of the store's three rings (store.layout: 45 days at 5 minutes)."""
    ib, eb, cb = store.layout(block_size)
    return (ib + eb + cb) * block_size


def wear_years(max_erases, days, limit=100000):
    """Years until the most-erased block reaches `limit` erases, at the rate
    max_erases per `days` days (integer arithmetic; None if no erases)."""
    if max_erases <= 0:
        return None
    return limit * days // (max_erases * 365)


def wear_estimate(
    block_size=4096,
    interval_s=900,
    events_per_day=24,
    event_data=4,
    config_puts_per_day=4,
    config_value=32,
    limit=100000,
):
    """Steady-state erases per block per day (as (erases, days) fractions per ring)
    and years until the most-erased block reaches `limit`, from the format alone.

    Each ring erases one block per block filled, round robin, so a block is
    erased once per (blocks x usable slots) slots written to its ring."""
    ib, eb, cb = store.layout(block_size)
    usable = block_size // SLOT - HDR_SLOTS
    iv_slots = 86400 // interval_s + 2  # intervals + one register read
    n_ev = NSLOT[size_class(12 + event_data + 2)]
    ev_slots = events_per_day * n_ev
    n_cf = NSLOT[size_class(3 + config_value + 2)]
    cf_slots = config_puts_per_day * n_cf
    # config: each new block also receives copies of the victim's live records,
    # at most half a block: the worst case wears as if a block fills twice as fast
    rings = (
        ("intervals", ib, iv_slots, 1),
        ("events", eb, ev_slots, 1),
        ("config", cb, cf_slots, 2),
    )
    out = {}
    worst_num, worst_den = 0, 1
    for name, blocks, slots, factor in rings:
        # erases per block per day = slots * factor / (usable * blocks)
        num, den = slots * factor, usable * blocks
        out[name] = (num, den)
        if num * worst_den > worst_num * den:
            worst_num, worst_den = num, den
    years = None
    if worst_num:
        years = limit * worst_den // (worst_num * 365)
    out["years_to_limit"] = years
    return out
