"""EdgeFleet device agent: no Django, no project imports; runs on the device."""
