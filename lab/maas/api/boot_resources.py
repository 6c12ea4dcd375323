"""``boot-resources/``: the images MAAS can deploy (the lab's are fixed by its spec)."""

from __future__ import annotations

from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import Request, Resource, bad_request, not_found


class BootResources(Resource):
    def boot_resources_read(self, req: Request) -> Any:
        kind = (req.query.get("type") or "").lower()
        if kind and kind not in ("synced", "uploaded", "generated"):
            raise bad_request(f"'{kind}' is not a valid type.")
        return [
            model.image_json(i)
            for i in self.state.images
            if not kind or (kind == "uploaded") == i.uploaded and kind != "generated"
        ]

    def boot_resource_read(self, req: Request, id: str) -> Any:
        img = next((i for i in self.state.images if str(i.id) == id), None)
        if img is None:
            raise not_found("BootResource")
        return model.image_json(img, with_sets=True)
