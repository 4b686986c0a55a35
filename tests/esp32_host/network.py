# Host stand-in for the ESP32 port's `network` module: only network.WLAN as the
# MicroPython v1.28 docs define it (WLAN(interface_id) with WLAN.IF_STA /
# WLAN.IF_AP, active([is_active]), connect(ssid=None, key=None, *, bssid=None),
# isconnected(), status(), disconnect()). It stands in for hardware on the host
# only (tests/test_hal_esp32.py); it is never part of the firmware. No radio: it
# records what was asked (sim_log), and connect() on an inactive interface
# raises OSError as the ESP32 does ("Wifi Not Started").

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010

sim_wlans = {}  # interface id -> WLAN (one object per interface, as on the board)
sim_log = []  # ("active", iface, bool) / ("connect", iface, ssid, key)


class WLAN:
    IF_STA = 0
    IF_AP = 1

    def __new__(cls, interface_id=0):
        if interface_id not in (WLAN.IF_STA, WLAN.IF_AP):
            raise ValueError("invalid WLAN interface", interface_id)
        o = sim_wlans.get(interface_id)
        if o is None:
            o = object.__new__(cls)
            o.iface = interface_id
            o._active = False
            o._ssid = None
            o._status = STAT_IDLE
            sim_wlans[interface_id] = o
        return o

    def __init__(self, interface_id=0):
        pass

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        sim_log.append(("active", self.iface, self._active))
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self.iface != WLAN.IF_STA:
            raise OSError("only the STA interface connects")
        if not self._active:
            raise OSError("Wifi Not Started")
        self._ssid = ssid
        self._status = STAT_CONNECTING
        sim_log.append(("connect", self.iface, ssid, key))

    def disconnect(self):
        self._ssid = None
        self._status = STAT_IDLE

    def isconnected(self):
        return self._status == STAT_GOT_IP

    def status(self, param=None):
        return self._status


STA_IF = WLAN.IF_STA
AP_IF = WLAN.IF_AP
